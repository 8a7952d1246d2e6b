"""SimCLR wired to fmcore's contract: two views -> encoder features (method.features: CLS,
mean patch token or both) -> projection head -> NT-Xent."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from fmcore.collapse import FEATURE_STD, PREFIX, feature_spread
from fmcore.encoder import Encoder, feature_kind, pool
from fmcore.errors import ConfigError
from fmcore.method import Batch, Method, StepContext, StepOutput
from fmcore.modalities.base import Modality
from fmcore.plugins.simclr.loss import nt_xent


class ProjectionHead(nn.Sequential):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class SimCLR(Method):
    name = "simclr"

    def __init__(self, config: DictConfig, encoder: Encoder, modality: Modality) -> None:
        super().__init__(config, encoder, modality)
        if self.view_specs["global"].count != 2:
            raise ConfigError("method.views.global.count must be 2 for SimCLR (one positive pair)")
        self.features = feature_kind(config.get("features"), "method.features")
        width = encoder.embed_dim * (2 if self.features == "cls+mean" else 1)
        self.head = ProjectionHead(width, config.hidden_dim, config.projection_dim)
        # SimCLR never masks tokens; a trainable but unused parameter would stall DDP's reducer.
        encoder.mask_token.requires_grad_(False)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        first, second = ctx.views(batch.data, self.view_specs["global"], ctx.generator)
        # One encoder pass over both views (larger matrix products: ~25% faster on a CPU). The
        # head contrasts the features the method is evaluated on (method.features).
        both = pool(self.encoder(torch.cat([first, second])), self.features)  # (2B, D)
        features = both[: len(first)]
        z1, z2 = self.head(both).chunk(2)
        loss = nt_xent(z1, z2, self.config.temperature)
        positive, negative = pair_similarities(z1, z2)
        return StepOutput(
            loss=loss,
            metrics={
                FEATURE_STD: feature_spread(features),
                POSITIVE: positive,
                NEGATIVE: negative,
            },
        )

    def collapse_warnings(self, metrics: Mapping[str, float], progress: float) -> dict[str, str]:
        warnings = super().collapse_warnings(metrics, progress)
        gap = metrics[POSITIVE] - metrics[NEGATIVE]
        if progress >= SEPARATION_AFTER and gap < SEPARATION_WARNING:
            warnings[POSITIVE] = (
                f"two views of a sample are barely closer than two samples (cosine"
                f" {metrics[POSITIVE]:.3f} vs {metrics[NEGATIVE]:.3f}):"
                " the views may be too strong to match, or the encoder is not learning"
            )
        return warnings


POSITIVE = PREFIX + "positive_similarity"  # mean cosine of the two views of a sample
NEGATIVE = PREFIX + "negative_similarity"  # mean cosine of views of different samples
SEPARATION_AFTER = 0.2  # share of training after which positives should stand out
SEPARATION_WARNING = 0.05  # cosine gap between positive and negative pairs


@torch.no_grad()
def pair_similarities(z1: Tensor, z2: Tensor) -> tuple[float, float]:
    """Mean cosine similarity of the positive pairs (z1[i], z2[i]) and of the other pairs."""
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    similarity = a @ b.T  # (B, B)
    batch = similarity.shape[0]
    positive = similarity.diagonal().sum()
    negative = (similarity.sum() - positive) / max(1, batch * (batch - 1))
    return float(positive / batch), float(negative)
