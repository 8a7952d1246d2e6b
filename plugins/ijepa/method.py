"""I-JEPA wired to fmcore's contract: one view -> target blocks and a context block on the
modality's token layout (``Modality.block_extents``/``place_block``: boxes on a grid, tubes for
video) -> the student encodes the context tokens only -> a narrow predictor fills in each target
block -> L2 against the EMA teacher's layer-normed representations of the whole view.

The teacher is what ``fmcore eval`` gets (as in the reference evaluation), scored on the mean
patch token (``method.features: mean``).
"""

from __future__ import annotations

import copy

import torch
from omegaconf import DictConfig
from torch import Tensor

from fmcore.collapse import FEATURE_STD, LOSS_VS_MEAN, feature_spread, loss_vs_mean_predictor
from fmcore.config_sections import structured
from fmcore.encoder import Encoder
from fmcore.errors import ConfigError
from fmcore.method import (
    Batch,
    Method,
    StepContext,
    StepOutput,
    as_teacher,
    ema_update,
    layer_normed_tokens,
)
from fmcore.modalities.base import Modality, Tokens, gather_rows
from fmcore.modalities.grid import masked_mse
from fmcore.modalities.masking import host_rng
from fmcore.plugins.ijepa.masks import BlockMasks, MaskConfig, sample_block_masks
from fmcore.plugins.ijepa.predictor import Predictor, PredictorConfig

CONTEXT_FRACTION = "context_fraction"  # share of a view's tokens the student sees
TARGET_FRACTION = "target_fraction"  # share of a view's tokens in the target blocks


class IJEPA(Method):
    """Joint-embedding predictive architecture over one view's blocks."""

    name = "ijepa"

    def __init__(self, config: DictConfig, encoder: Encoder, modality: Modality) -> None:
        super().__init__(config, encoder, modality)
        if self.view_specs["global"].count != 1:
            raise ConfigError("method.views.global.count must be 1 for I-JEPA (one view)")
        self.masks = structured(config.masks, MaskConfig, "method.masks")
        predictor = structured(config.predictor, PredictorConfig, "method.predictor")
        self.predictor = Predictor(encoder.embed_dim, predictor)
        self.teacher = as_teacher(copy.deepcopy(encoder))
        # Context tokens are dropped, never replaced: the student's mask token gets no gradient.
        encoder.mask_token.requires_grad_(False)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        (view,) = ctx.views(batch.data, self.view_specs["global"], ctx.generator)
        tokens = self.encoder.tokenizer(view)
        masks = sample_block_masks(self.modality, tokens, self.masks, host_rng(ctx.generator))
        targets = self.target_representations(view, masks)
        pred = self.predict(tokens, masks)
        scored = torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
        loss = masked_mse(pred, targets, scored)
        num_tokens = tokens.x.shape[1]
        return StepOutput(
            loss=loss,
            metrics={
                CONTEXT_FRACTION: masks.context.shape[1] / num_tokens,
                TARGET_FRACTION: sum(t.shape[1] for t in masks.targets) / num_tokens,
                FEATURE_STD: feature_spread(targets.mean(dim=1)),
                LOSS_VS_MEAN: loss_vs_mean_predictor(masked_mse, loss, targets, scored),
            },
        )

    @torch.no_grad()
    def target_representations(self, view: Tensor, masks: BlockMasks) -> Tensor:
        """The teacher's layer-normed patch tokens of the whole view at every target block,
        blocks stacked along the batch: (num_targets * B, T, D)."""
        patches = layer_normed_tokens(self.teacher, view)
        return torch.cat([gather_rows(patches, index) for index in masks.targets])

    def predict(self, tokens: Tokens, masks: BlockMasks) -> Tensor:
        """The predictor's guess of every target block from the student's encoded context,
        blocks stacked along the batch as :meth:`target_representations` stacks them."""
        context = self.encoder.encode_tokens(tokens, keep=masks.context).patches  # (B, K, D)
        context_pos = gather_rows(tokens.pos, masks.context)
        repeats = len(masks.targets)
        target_pos = torch.cat([gather_rows(tokens.pos, index) for index in masks.targets])
        return self.predictor(
            context.repeat(repeats, 1, 1), context_pos.repeat(repeats, 1, 1), target_pos
        )

    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update([(self.teacher, self.encoder)], ctx.ema_momentum)

    def export_encoder(self) -> Encoder:
        return self.teacher  # the reference evaluates the target encoder
