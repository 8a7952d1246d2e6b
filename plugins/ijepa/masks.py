"""I-JEPA's multi-block masks: a few target blocks, and one large context block with the
targets cut out of it, on whatever layout the modality's tokens have.

Block sizes are drawn once per batch (one size for every target block of every sample, so the
targets stack, and one for the contexts); places are drawn per sample. Contexts differ in size
once the targets are cut out; every context is cut to the batch's smallest, keeping its first
tokens, as the reference collator does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fmcore.errors import ConfigError
from fmcore.modalities.base import Modality, Tokens

PLACEMENT_TRIES = 20  # draws of a sample's blocks before taking whatever context is left


@dataclass(frozen=True)
class MaskConfig:
    """``method.masks``: I-JEPA's numbers are 4 targets of 15-20% of the tokens with aspect
    0.75-1.5 and a context of 85-100% (aspect 1), kept only if ``min_context`` tokens remain."""

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_context: int = 10

    def __post_init__(self) -> None:
        if self.num_targets < 1:
            raise ConfigError(
                f"method.masks.num_targets must be at least 1, not {self.num_targets}"
            )
        for key in ("target_scale", "context_scale"):
            low, high = getattr(self, key)
            if not 0 < low <= high <= 1:
                raise ConfigError(
                    f"method.masks.{key} must be 0 < low <= high <= 1, not {[low, high]}"
                )


@dataclass
class BlockMasks:
    """context (B, K) and each target block's (B, T_k) token indices, ascending per row."""

    context: Tensor
    targets: list[Tensor]


def sample_block_masks(
    modality: Modality, tokens: Tokens, config: MaskConfig, rng: np.random.Generator
) -> BlockMasks:
    """Target and context blocks for every sample of ``tokens`` (B, N, D)."""
    batch = tokens.x.shape[0]
    target_size = modality.block_extents(tokens, config.target_scale, config.target_aspect, rng)
    context_size = modality.block_extents(tokens, config.context_scale, (1.0, 1.0), rng)
    contexts, targets = [], []
    for _ in range(batch):
        for _ in range(PLACEMENT_TRIES):
            blocks = [
                modality.place_block(tokens, target_size, rng) for _ in range(config.num_targets)
            ]
            covered = np.logical_or.reduce(blocks)
            context = modality.place_block(tokens, context_size, rng) & ~covered
            if context.sum() >= config.min_context:
                break
        else:  # small grids: the context is whatever the targets leave
            context = ~covered
        if not context.any():
            raise ConfigError(
                f"I-JEPA's target blocks cover all {tokens.num_tokens} tokens of a view: lower"
                " method.masks.num_targets or method.masks.target_scale"
            )
        contexts.append(np.flatnonzero(context))
        targets.append([np.flatnonzero(block) for block in blocks])
    keep = min(len(context) for context in contexts)
    device = tokens.x.device
    return BlockMasks(
        context=torch.as_tensor(np.stack([c[:keep] for c in contexts]), device=device),
        targets=[
            torch.as_tensor(np.stack([sample[k] for sample in targets]), device=device)
            for k in range(config.num_targets)
        ],
    )
