"""D-iGPT wired to fmcore's contract: ARM's clusters in a random order under a block-causal
mask, but the targets are a teacher's features, not pixels. Every token predicts the teacher's
feature of its counterpart in the next cluster (autoregression) and of itself (distillation of
the visible tokens), each through its own per-token head, under a cosine loss (2 - 2 cos, as the
reference's); ``method.pixel_weight`` adds ARM's next-cluster pixel loss beside them.

The teacher is an fmcore encoder on disk (``method.teacher``: a file or run directory, frozen,
read through ``Method.attach_teacher``) or, when none is given, the EMA of the student. The
reference distils OpenCLIP ViT-H/14; no hub weights are fetched here, so a site gives its own
encoder file. The student is what ``fmcore eval`` gets, bidirectionally, on the mean patch token.
"""

from __future__ import annotations

import copy

import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from fmcore.collapse import FEATURE_STD, feature_spread
from fmcore.encoder import Encoder
from fmcore.errors import ConfigError
from fmcore.method import (
    Batch,
    Scope,
    StepContext,
    StepOutput,
    as_teacher,
    ema_update,
    layer_normed_tokens,
)
from fmcore.modalities.base import Modality, gather_rows
from fmcore.plugins.autoregressive.arm import ARM, CLUSTERS
from fmcore.plugins.autoregressive.clusters import cluster_ranks
from fmcore.plugins.autoregressive.head import PixelHead

NEXT_COSINE = "next_cosine"  # mean cosine of the next-cluster predictions to the teacher's
VISIBLE_COSINE = "visible_cosine"  # mean cosine of the visible-token predictions


def cosine_loss(pred: Tensor, target: Tensor, scored: Tensor) -> tuple[Tensor, float]:
    """2 - 2 cos(pred, target) per token (the MSE of the L2-normalised vectors), averaged over
    the scored tokens (B, N); and the mean cosine of those tokens, for the log."""
    cosine = F.cosine_similarity(pred.float(), target.float(), dim=-1)
    weights = scored.to(cosine.dtype)
    loss = ((2 - 2 * cosine) * weights).sum() / weights.sum().clamp(min=1)
    return loss, float(cosine.detach()[scored].mean())


class DiGPT(ARM):
    """Cluster autoregression and visible-token distillation of a teacher's features."""

    name = "digpt"
    remedy = "check trainer.lr and the teacher (method.teacher)"

    def __init__(self, config: DictConfig, encoder: Encoder, modality: Modality) -> None:
        super().__init__(config, encoder, modality)
        self.pixel_weight = float(config.pixel_weight)
        if self.pixel_weight < 0:
            raise ConfigError(f"method.pixel_weight must be 0 or more, not {self.pixel_weight}")
        if self.pixel_weight == 0:
            self.head = None  # ARM's pixel head: kept only for the pixel loss
        self.teacher = as_teacher(copy.deepcopy(encoder))
        self.teacher_from_file = False
        self.build_feature_heads(encoder.embed_dim)

    def build_feature_heads(self, teacher_dim: int) -> None:
        """The next-cluster head, and with a teacher from disk the visible-token head: against
        the student's own EMA, predicting a visible token's feature is copying itself (cosine
        0.998 within 100 steps on digits, the features collapsing)."""
        width = self.encoder.embed_dim
        self.next_head = PixelHead(width, teacher_dim, self.head_config)
        self.visible_head = (
            PixelHead(width, teacher_dim, self.head_config) if self.teacher_from_file else None
        )

    def attach_teacher(self, teacher: Encoder) -> None:
        """A frozen encoder from disk replaces the EMA teacher; the heads predict its width."""
        self.teacher = as_teacher(teacher)
        self.teacher_from_file = True
        self.build_feature_heads(teacher.embed_dim)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        (view,) = ctx.views(batch.data, self.view_specs["global"], ctx.generator)
        tokens = self.encoder.tokenizer(view)
        layout = self.layout(tokens)
        ranks = cluster_ranks(tokens.x.shape[0], layout.shape[0], self.order, ctx.generator)
        clusters = self.cluster_pass(tokens, layout, ranks)
        teacher = layer_normed_tokens(self.teacher, view)  # (B, N, Dt), the whole view
        features = clusters.encoded.patches
        next_position = self.next_position(tokens, clusters)
        next_target = gather_rows(teacher, clusters.following)
        scored = clusters.scored  # as the reference, the last cluster is neither input nor target
        loss, next_cosine = cosine_loss(
            self.next_head(features + next_position), next_target, scored
        )
        metrics = {NEXT_COSINE: next_cosine}
        if self.visible_head is not None:
            visible_pred = self.visible_head(features + self.target_position(tokens.pos))
            visible_loss, metrics[VISIBLE_COSINE] = cosine_loss(visible_pred, teacher, scored)
            loss = loss + visible_loss
        if self.head is not None:
            pixels = self.pixel_prediction(view, tokens, clusters, next_position)
            loss = loss + self.pixel_weight * self.modality.reconstruction_loss(
                pixels.pred, pixels.target, scored
            )
        return StepOutput(
            loss=loss,
            metrics={
                CLUSTERS: float(layout.shape[0]),
                FEATURE_STD: feature_spread(features.mean(dim=1)),
                **metrics,
            },
        )

    def after_optimizer_step(self, ctx: StepContext) -> None:
        if not self.teacher_from_file:
            ema_update([(self.teacher, self.encoder)], ctx.ema_momentum)

    def scopes(self) -> dict[str, Scope]:
        """A teacher read from disk never leaves the site; an EMA teacher's trunk is shared."""
        scopes = super().scopes()
        if not self.teacher_from_file:
            return scopes
        return {k: Scope.LOCAL if k.startswith("teacher.") else v for k, v in scopes.items()}
