"""Clusters of neighbouring tokens on a token grid, and the order they are predicted in (ARM's
prediction units: 2D boxes of patches; ARVideo's: spatiotemporal boxes of tubelets)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fmcore.errors import ConfigError

ORDERS = ("raster", "random")


def cluster_layout(grid: Sequence[int], shape: Sequence[int], key: str) -> Tensor:
    """(C, K) long: row c holds the token indices (raster order over ``grid``) of cluster c.

    Clusters are boxes of ``shape`` tokens tiling the grid, numbered in raster order over the
    grid of clusters; a cluster's tokens are listed in raster order within the box. ``key``
    names the config key of ``shape`` in errors.
    """
    if len(shape) != len(grid):
        raise ConfigError(
            f"{key}={list(shape)} has {len(shape)} axes; the token grid {tuple(grid)}"
            f" has {len(grid)}"
        )
    if any(s < 1 or g % s for g, s in zip(grid, shape, strict=True)):
        raise ConfigError(f"{key}={list(shape)} does not tile the token grid {tuple(grid)}")
    split = [size for g, s in zip(grid, shape, strict=True) for size in (g // s, s)]
    axes = len(grid)
    outer, inner = list(range(0, 2 * axes, 2)), list(range(1, 2 * axes, 2))
    index = torch.arange(math.prod(grid)).reshape(split).permute(*outer, *inner)
    return index.reshape(math.prod(split[::2]), math.prod(shape))


def fit_cluster(grid: Sequence[int], requested: Sequence[int], key: str) -> tuple[int, ...]:
    """The cluster box used on ``grid``: per axis the largest size that divides the grid and is
    at most the ``requested`` size, then, while that leaves a single cluster, the largest box
    side shrunk to its next divisor (a 14 x 14 grid of 224-px tiles takes 2 x 2 for a requested
    4 x 4; a 4 x 4 grid takes 2 x 4). ``key`` names the config key in errors."""
    if len(requested) != len(grid):
        raise ConfigError(
            f"{key}={list(requested)} has {len(requested)} axes; the token grid {tuple(grid)}"
            f" has {len(grid)}"
        )
    if any(size < 1 for size in requested):
        raise ConfigError(f"{key}={list(requested)}: every size must be at least 1")
    shape = [max(d for d in divisors(g) if d <= r) for g, r in zip(grid, requested, strict=True)]
    while math.prod(shape) == math.prod(grid) and max(shape) > 1:
        axis = shape.index(max(shape))
        shape[axis] = max(d for d in divisors(grid[axis]) if d < shape[axis])
    if math.prod(shape) == 1 and math.prod(grid) < 2:
        raise ConfigError(f"a token grid of {tuple(grid)} has nothing to predict ({key})")
    return tuple(shape)


def divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


def cluster_ranks(batch: int, clusters: int, order: str, generator: torch.Generator) -> Tensor:
    """(B, C) long: the place of each cluster in its sample's prediction order, raster (the
    clusters' own order) or a random permutation per sample."""
    device = generator.device
    if order == "raster":
        return torch.arange(clusters, device=device).expand(batch, clusters)
    noise = torch.rand(batch, clusters, generator=generator, device=device)
    return noise.argsort(dim=1).argsort(dim=1)


def token_places(layout: Tensor) -> tuple[Tensor, Tensor]:
    """(N,) the cluster of every token and (N,) its place within that cluster."""
    clusters, size = layout.shape
    flat = layout.flatten()
    cluster_of, place_of = torch.empty_like(flat), torch.empty_like(flat)
    cluster_of[flat] = torch.arange(clusters, device=layout.device).repeat_interleave(size)
    place_of[flat] = torch.arange(size, device=layout.device).repeat(clusters)
    return cluster_of, place_of


def next_cluster_tokens(layout: Tensor, ranks: Tensor) -> Tensor:
    """(B, N) long: for every token, the token in the same place of the cluster that comes next
    in its sample's order (the last cluster points at itself: its predictions are not scored)."""
    clusters = layout.shape[0]
    cluster_at_rank = ranks.argsort(dim=1)  # (B, C)
    following = (ranks + 1).clamp(max=clusters - 1)
    next_cluster = cluster_at_rank.gather(1, following)  # (B, C)
    cluster_of, place_of = token_places(layout)
    return layout[next_cluster[:, cluster_of], place_of]
