"""SimCLR wired to fmcore's contract: two views -> encoder CLS -> projection head -> NT-Xent."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from fmcore.encoder import Encoder
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
        self.head = ProjectionHead(encoder.embed_dim, config.hidden_dim, config.projection_dim)
        # SimCLR never masks tokens; a trainable but unused parameter would stall DDP's reducer.
        encoder.mask_token.requires_grad_(False)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        first, second = ctx.views(batch.data, self.view_specs["global"], ctx.generator)
        z1 = self.head(self.encoder(first).cls)
        z2 = self.head(self.encoder(second).cls)
        loss = nt_xent(z1, z2, self.config.temperature)
        return StepOutput(loss=loss)
