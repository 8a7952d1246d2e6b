"""AIM's prediction head: residual MLP blocks applied to every token on its own.

The paper's head has no attention (a token's prediction must come from what the trunk let it
see) and is deep: the trunk's features stay general while the head specialises in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class HeadConfig:
    """``method.head``: ``depth`` residual MLP blocks of width ``width`` (hidden width
    ``width * mlp_ratio``)."""

    width: int = 2048
    depth: int = 12
    mlp_ratio: float = 4.0


class ResidualMLP(nn.Module):
    def __init__(self, width: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm(x))


class PixelHead(nn.Module):
    """Per-token prediction (B, N, P) of features (B, N, D): in-projection to the head's width,
    residual MLP blocks, a final norm and the out-projection to the target size."""

    def __init__(self, in_dim: int, target_dim: int, config: HeadConfig) -> None:
        super().__init__()
        self.proj_in = nn.Linear(in_dim, config.width)
        self.blocks = nn.Sequential(
            *(ResidualMLP(config.width, config.mlp_ratio) for _ in range(config.depth))
        )
        self.norm = nn.LayerNorm(config.width, eps=1e-6)
        self.proj_out = nn.Linear(config.width, target_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.proj_out(self.norm(self.blocks(self.proj_in(features))))
