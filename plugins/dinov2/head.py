"""DINO projection head: MLP -> L2-normalised bottleneck -> weight-normalised prototypes."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    """As in DINO/DINOv2: ``nlayers`` linear layers with GELU, a bottleneck, then prototypes.

    The prototype layer is weight-normalised with its norm fixed to 1, i.e. each prototype is a
    unit vector; DINOv2 writes it with ``weight_norm`` and ``weight_g`` frozen at 1.
    """

    def __init__(
        self, in_dim: int, num_prototypes: int, hidden_dim: int, bottleneck_dim: int, nlayers: int
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-6)  # (B, bottleneck)
        return F.linear(x, F.normalize(self.prototypes, dim=-1))  # (B, K) cosine logits
