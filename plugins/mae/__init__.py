"""MAE: masked autoencoders (He et al., 2022) on every modality, through the token contract.

One method serves images, volumes, video (VideoMAE's tube masking comes from the video modality's
``token_mask``) and point clouds (Point-MAE's Chamfer loss comes from the points modality's
``reconstruction_loss``): the method never asks which domain or modality it is training.
"""
