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
from fmcore.modalities.base import Modality, Tokens, gather_rows
from fmcore.modalities.masking import masked_count, split_indices
from fmcore.plugins.mae.decoder import DecoderConfig, MAEDecoder


@dataclass
class Reconstruction:
    """One masked-autoencoding pass over a batch of views.

    tokens:  every token of the views (B, N, D), as the tokenizer made them (targets need them).
    mask:    (B, N) bool, True where the token was hidden from the encoder.
    valid:   (B, N) bool, True where the token holds data (all of them without a valid mask).
    visible: (B, M) indices of the tokens the encoder saw, ascending.
    pred:    (B, K, P) the decoder's prediction of the targets of the tokens ``decoded``.
    encoded: the encoder's output on the visible tokens.
    decoded: (B, K) indices of the tokens the decoder ran on, ascending: all N, or under dual
             masking the visible ones and a random share of the hidden ones.
    """

    tokens: Tokens
    mask: Tensor
    valid: Tensor
    visible: Tensor
    pred: Tensor
    encoded: EncoderOutput
    decoded: Tensor

    @property
    def decoded_mask(self) -> Tensor:
        """(B, K) bool: which decoded tokens were hidden from the encoder and hold data (the
        tokens the loss grades)."""
        return (self.mask & self.valid).gather(1, self.decoded)

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
        self.decoder_mask_ratio = float(config.decoder_mask_ratio)
        self.normalize_target = bool(config.normalize_target)
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.decoder_mask_ratio < self.mask_ratio:
            raise ConfigError(
                f"method.decoder_mask_ratio must be in [0, method.mask_ratio={self.mask_ratio}),"
                f" got {self.decoder_mask_ratio}: the decoder needs the encoder's visible tokens"
                " and some hidden ones to reconstruct"
            )
        self.decoder = MAEDecoder(
            encoder.embed_dim,
            encoder.tokenizer.target_dim,
            DecoderConfig(**as_dict(config.decoder)),
        )
        # MAE drops hidden tokens instead of replacing them, so the encoder's mask token is never
        # used; a trainable parameter without a gradient would stall DDP's reducer.
        encoder.mask_token.requires_grad_(False)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        ((view, valid),) = ctx.views.with_valid(
            batch.data, batch.valid, self.view_specs["global"], ctx.generator
        )
        out = self.reconstruct(view, ctx.generator, valid=valid)
        target = self.encoder.tokenizer.reconstruction_target(
            view, out.tokens, self.normalize_target
        )  # (B, N, P)
        target = gather_rows(target, out.decoded)  # (B, K, P)
        loss = self.modality.reconstruction_loss(out.pred, target, out.decoded_mask)
        loss_fn = self.modality.reconstruction_loss
        return StepOutput(
            loss=loss,
            metrics={
                "mask_ratio": out.masked_fraction,
                FEATURE_STD: feature_spread(out.encoded.patches.mean(dim=1)),
                LOSS_VS_MEAN: loss_vs_mean_predictor(loss_fn, loss, target, out.decoded_mask),
            },
        )

    def collapse_warnings(self, metrics: Mapping[str, float], progress: float) -> dict[str, str]:
        remedy = "check trainer.lr and method.mask_ratio"
        return super().collapse_warnings(metrics, progress) | mean_predictor_warning(
            metrics, progress, remedy
        )

    def reconstruct(
        self,
        view: Tensor,
        generator: torch.Generator,
        decode_all: bool = False,
        valid: Tensor | None = None,
    ) -> Reconstruction:
        """Mask ``view``'s tokens at ``mask_ratio``, encode the visible ones, decode them and
        the hidden ones: all of them, or with ``decoder_mask_ratio`` (VideoMAE V2's dual
        masking) a random share of the hidden ones, unless ``decode_all`` (the pictures).

        With ``valid``, the view's valid-pixel mask, tokens without data (a fundus camera's
        black corners) are hidden from the encoder, count in neither the masking budget nor
        the loss (:func:`random_token_mask`)."""
        tokens = self.encoder.tokenizer(view)  # (B, N, D)
        batch, num_tokens = tokens.x.shape[:2]
        token_valid = None if valid is None else self.encoder.tokenizer.valid_tokens(valid)
        mask = self.modality.token_mask(
            batch, tokens, self.mask_ratio, generator, token_valid
        )  # (B, N)
        if token_valid is None:
            token_valid = torch.ones_like(mask)
        visible, hidden = split_indices(mask)  # (B, M) with M = N - masked
        encoded = self.encoder.encode_tokens(tokens, keep=visible)  # patches (B, M, D)
        if self.decoder_mask_ratio > 0 and not decode_all:
            dropped = masked_count(num_tokens, self.decoder_mask_ratio)
            scores = torch.rand(hidden.shape, generator=generator, device=hidden.device)
            kept = hidden.gather(1, scores.argsort(dim=1)[:, dropped:])
            decoded = torch.cat([visible, kept], dim=1).sort(dim=1).values  # (B, K)
            pred = self.decoder(encoded.cls, encoded.patches, visible, tokens.pos, decoded)
        else:  # every token: the decoder needs no selection
            decoded = torch.arange(num_tokens, device=mask.device).expand(batch, -1)
            pred = self.decoder(encoded.cls, encoded.patches, visible, tokens.pos)
        return Reconstruction(tokens, mask, token_valid, visible, pred, encoded, decoded)
