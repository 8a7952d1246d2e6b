"""Token masks shared by every modality (MAE-style random masking and its index split)."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_count(num_tokens: int, ratio: float) -> int:
    """Number of masked tokens for a ratio, keeping at least one token visible."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return min(num_tokens - 1, round(ratio * num_tokens))


def random_token_mask(
    batch_size: int, num_tokens: int, ratio: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """(B, N) bool mask with exactly ``masked_count(N, ratio)`` True entries per row."""
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=device)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, : masked_count(num_tokens, ratio)], True)
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
