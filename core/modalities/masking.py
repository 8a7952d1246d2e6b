"""Token masks shared by every modality: random (MAE), block-wise (BEiT/iBOT), index splits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fmcore.errors import ConfigError


def host_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from the step's torch ``generator``, for masks drawn on the
    host (block masks), so they follow the run's seed."""
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
    return np.random.default_rng(seed)


def masked_count(num_tokens: int, ratio: float) -> int:
    """Number of masked tokens for a ratio, keeping at least one token visible."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mask ratio must be in [0, 1), got {ratio}")
    return min(num_tokens - 1, round(ratio * num_tokens))


def random_token_mask(
    batch_size: int,
    num_tokens: int,
    ratio: float,
    generator: torch.Generator,
    device: torch.device,
    valid: Tensor | None = None,
) -> Tensor:
    """(B, N) bool mask with exactly ``masked_count(N, ratio)`` True entries per row.

    With ``valid`` (B, N) bool (tokens inside a field of view), the masking budget counts valid
    tokens only: every row keeps the same number of tokens visible, ``1 - ratio`` of the batch's
    mean valid count, drawn from each row's valid tokens first; the invalid ones are masked
    (and a loss over masked tokens must leave them out).
    """
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=device)
    num_masked = masked_count(num_tokens, ratio)
    if valid is not None:
        mean_valid = float(valid.sum(dim=1).float().mean())
        visible = min(num_tokens - 1, max(1, round((1.0 - ratio) * mean_valid)))
        num_masked = num_tokens - visible
        noise = noise - 2.0 * (~valid).to(noise.dtype)  # invalid tokens sort first: masked
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :num_masked], True)
    return mask


def split_indices(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the visible and the masked tokens of a mask with equal counts per row.

    Returns ``(visible, masked)``, each (B, M) long, both sorted ascending, together a permutation
    of ``range(N)`` per row.
    """
    counts = mask.sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("every row of the mask must mask the same number of tokens")
    order = mask.to(torch.int8).argsort(dim=1, stable=True)
    num_masked = int(counts[0])
    num_visible = mask.shape[1] - num_masked
    return order[:, :num_visible], order[:, num_visible:]


def block_mask(
    grid: tuple[int, ...],
    num_masked: int,
    rng: np.random.Generator,
    min_block: int = 4,
    max_block: int | None = None,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> np.ndarray:
    """BEiT's block-wise mask on a token grid of any rank, as a flat bool array (N,).

    Boxes of random size (>= ``min_block`` tokens, <= ``max_block``) and log-uniform aspect are
    added until about ``num_masked`` tokens are masked; a box may only add tokens, never exceed
    the remaining budget, and ten failed placements in a row end the search (as in BEiT), so the
    count can fall slightly short of the target on crowded grids.
    """
    mask = np.zeros(grid, dtype=bool)
    max_block = max_block or num_masked
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 0
    while count < num_masked:
        budget = min(num_masked - count, max_block)
        added = _add_block(mask, budget, min_block, log_aspect, rng)
        if added == 0:
            break
        count += added
    return mask.reshape(-1)


def _add_block(
    mask: np.ndarray,
    budget: int,
    min_block: int,
    log_aspect: tuple[float, float],
    rng: np.random.Generator,
) -> int:
    for _ in range(10):
        extents = box_extents(
            rng.uniform(min_block, max(min_block, budget)), mask.ndim, log_aspect, rng
        )
        if any(e < 1 or e >= size for e, size in zip(extents, mask.shape, strict=True)):
            continue
        box = place_box(extents, mask.shape, rng)
        new = int(math.prod(extents)) - int(mask[box].sum())
        if 0 < new <= budget:
            mask[box] = True
            return new
    return 0


def box_extents(
    volume: float, rank: int, log_aspect: tuple[float, float], rng: np.random.Generator
) -> list[int]:
    """Side lengths of a box of about ``volume`` tokens on a grid of ``rank`` axes: each axis's
    ratio to the first is log-uniform in ``log_aspect`` (h/w in 2D), centred so the product of
    the sides stays ``volume``."""
    ratios = np.concatenate([[0.0], rng.uniform(*log_aspect, size=rank - 1)])
    ratios -= ratios.mean()
    return [round(volume ** (1 / rank) * math.exp(r)) for r in ratios]


def place_box(
    extents: Sequence[int], grid: Sequence[int], rng: np.random.Generator
) -> tuple[slice, ...]:
    """A box of ``extents`` at a uniformly random corner inside ``grid``."""
    corner = [int(rng.integers(0, size - e + 1)) for e, size in zip(extents, grid, strict=True)]
    return tuple(slice(c, c + e) for c, e in zip(corner, extents, strict=True))


def block_extents(
    grid: Sequence[int],
    scale: tuple[float, float],
    aspect: tuple[float, float],
    rng: np.random.Generator,
) -> list[int]:
    """I-JEPA's block size on a token grid: a share of the tokens uniform in ``scale``, an aspect
    (h/w in 2D) log-uniform in ``aspect``, every side clamped to 1 .. the grid's."""
    volume = rng.uniform(*scale) * math.prod(grid)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    extents = box_extents(volume, len(grid), log_aspect, rng)
    return [min(max(1, e), size) for e, size in zip(extents, grid, strict=True)]
