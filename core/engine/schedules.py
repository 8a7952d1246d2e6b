"""Per-step schedules: linear warm-up, then cosine, as DINOv2 schedules lr, decay and momentum."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int,
    total_steps: int,
    start: float,
    end: float,
    warmup_steps: int = 0,
    warmup_from: float = 0.0,
) -> float:
    """Value at ``step``: linear from ``warmup_from`` to ``start`` over ``warmup_steps``, then a
    half cosine from ``start`` down (or up) to ``end`` at ``total_steps``; ``end`` afterwards."""
    if step < warmup_steps:
        return warmup_from + (start - warmup_from) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))
