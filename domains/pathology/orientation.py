"""Vertical flips and quarter turns of tiles: a batched view step that runs on the device.

A tissue section has no up, down, left or right, so all eight symmetries of the square are
valid views of a tile. The core image views flip horizontally only (right for natural photos);
this step adds a vertical flip and a transpose, which together with the horizontal flip reach
every rotation and reflection.
"""

from __future__ import annotations

import torch
from torch import Tensor


class RandomDihedral:
    """Flip each view vertically with probability ``p`` and transpose it with probability ``p``
    (square views only; a non-square view is flipped but not transposed)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, views: Tensor, generator: torch.Generator) -> Tensor:
        if self.p <= 0:
            return views
        batch, device = views.shape[0], views.device
        shape = (-1, *([1] * (views.dim() - 1)))
        flip, transpose = (
            torch.rand(2, batch, generator=generator, device=device) < self.p
        ).unbind()
        views = torch.where(flip.view(shape), views.flip(-2), views)
        if views.shape[-1] == views.shape[-2]:
            views = torch.where(transpose.view(shape), views.transpose(-1, -2), views)
        return views

    def __repr__(self) -> str:
        return f"RandomDihedral(p={self.p})"
