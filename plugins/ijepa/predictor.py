"""I-JEPA's predictor: a narrow ViT over the encoded context tokens and one mask token per
target token, each carrying its position (a projection of the tokenizer's positional embedding,
so grids, volumes, video and point groups alike)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fmcore.backbones.vit import Block, ViTOptions


@dataclass(frozen=True)
class PredictorConfig:
    """``method.predictor``: the paper's is 12 blocks of width 384 (ViT-H encoder)."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0


class Predictor(nn.Module):
    def __init__(self, encoder_dim: int, config: PredictorConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.embed = nn.Linear(encoder_dim, dim)
        self.pos = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        options = ViTOptions(num_heads=config.num_heads, mlp_ratio=config.mlp_ratio)
        self.blocks = nn.ModuleList(Block(options, dim, 0.0) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, encoder_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, context: Tensor, context_pos: Tensor, target_pos: Tensor) -> Tensor:
        """Predicted representations (B, T, De) of the targets at ``target_pos`` (B, T, De)
        from the encoded ``context`` (B, K, De) at ``context_pos`` (B, K, De)."""
        x = self.embed(context) + self.pos(context_pos)
        queries = self.mask_token.to(x.dtype) + self.pos(target_pos)
        x = torch.cat([x, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x[:, context.shape[1] :]))
