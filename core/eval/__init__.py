"""Evaluation of frozen encoders: feature extraction, kNN, linear probe, torchmetrics metrics.

Each module is small and usable on its own (features in, metrics out), so the same protocols
can later run during training and on features written by ``fmcore embed``.
"""
