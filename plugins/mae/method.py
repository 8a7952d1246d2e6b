"""MAE wired to fmcore's contract: one view -> token mask -> encoder on the visible tokens ->
decoder over every position -> the modality's reconstruction loss on the hidden tokens.

Everything that differs between images (MAE), video (VideoMAE) and point clouds (Point-MAE) is
owned elsewhere: the mask shape by ``Modality.token_mask`` (tubes for video), the target by
``Tokenizer.reconstruction_target`` (normalised patches, tubelets, or group coordinates), the loss
by ``Modality.reconstruction_loss`` (MSE or Chamfer-L2), and the recipe numbers (mask ratio,
decoder size, crops) by ``method.by_modality`` in the config, resolved when it is composed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor

from fmcore.collapse import (
    FEATURE_STD,
    LOSS_VS_MEAN,
    feature_spread,
    loss_vs_mean_predictor,
    mean_predictor_warning,
)
from fmcore.config import as_dict
from fmcore.encoder import Encoder, EncoderOutput
from fmcore.errors import ConfigError
from fmcore.method import Batch, Method, StepContext, StepOutput
from fmcore.modalities.base import Modality, Tokens
from fmcore.modalities.masking import split_indices
from fmcore.plugins.mae.decoder import DecoderConfig, MAEDecoder


@dataclass
class Reconstruction:
    """One masked-autoencoding pass over a batch of views.

    tokens:  every token of the views (B, N, D), as the tokenizer made them (targets need them).
    mask:    (B, N) bool, True where the token was hidden from the encoder.
    visible: (B, M) indices of the tokens the encoder saw, ascending.
    pred:    (B, N, P) the decoder's prediction of every token's target.
    encoded: the encoder's output on the visible tokens.
    """

    tokens: Tokens
    mask: Tensor
    visible: Tensor
    pred: Tensor
    encoded: EncoderOutput

    @property
    def masked_fraction(self) -> float:
        num_tokens = self.mask.shape[1]
        return (num_tokens - self.visible.shape[1]) / num_tokens


class MAE(Method):
    """Masked autoencoder: the encoder sees the visible tokens only, the decoder fills in the rest.

    ``mask_ratio`` and the decoder come from ``method``, into which the config composer has
    merged ``method.by_modality.<modality>`` (VideoMAE's and Point-MAE's numbers).
    """

    name = "mae"

    def __init__(self, config: DictConfig, encoder: Encoder, modality: Modality) -> None:
        super().__init__(config, encoder, modality)
        if self.view_specs["global"].count != 1:
            raise ConfigError("method.views.global.count must be 1 for MAE (one view per sample)")
        self.mask_ratio = float(config.mask_ratio)
        self.normalize_target = bool(config.normalize_target)
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        self.decoder = MAEDecoder(
            encoder.embed_dim,
            encoder.tokenizer.target_dim,
            DecoderConfig(**as_dict(config.decoder)),
        )
        # MAE drops hidden tokens instead of replacing them, so the encoder's mask token is never
        # used; a trainable parameter without a gradient would stall DDP's reducer.
        encoder.mask_token.requires_grad_(False)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        (view,) = ctx.views(batch.data, self.view_specs["global"], ctx.generator)
        out = self.reconstruct(view, ctx.generator)
        target = self.encoder.tokenizer.reconstruction_target(
            view, out.tokens, self.normalize_target
        )  # (B, N, P)
        loss = self.modality.reconstruction_loss(out.pred, target, out.mask)
        loss_fn = self.modality.reconstruction_loss
        return StepOutput(
            loss=loss,
            metrics={
                "mask_ratio": out.masked_fraction,
                FEATURE_STD: feature_spread(out.encoded.patches.mean(dim=1)),
                LOSS_VS_MEAN: loss_vs_mean_predictor(loss_fn, loss, target, out.mask),
            },
        )

    def collapse_warnings(self, metrics: Mapping[str, float], progress: float) -> dict[str, str]:
        remedy = "check trainer.lr and method.mask_ratio"
        return super().collapse_warnings(metrics, progress) | mean_predictor_warning(
            metrics, progress, remedy
        )

    def reconstruct(self, view: Tensor, generator: torch.Generator) -> Reconstruction:
        """Mask ``view``'s tokens at ``mask_ratio``, encode the visible ones, decode all of them."""
        tokens = self.encoder.tokenizer(view)  # (B, N, D)
        batch = tokens.x.shape[0]
        mask = self.modality.token_mask(batch, tokens, self.mask_ratio, generator)  # (B, N)
        visible, _ = split_indices(mask)  # (B, M) with M = N - masked
        encoded = self.encoder.encode_tokens(tokens, keep=visible)  # patches (B, M, D)
        pred = self.decoder(encoded.cls, encoded.patches, visible, tokens.pos)  # (B, N, P)
        return Reconstruction(tokens=tokens, mask=mask, visible=visible, pred=pred, encoded=encoded)
