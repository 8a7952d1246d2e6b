"""Per-step schedules: linear warm-up, then cosine, as DINOv2 schedules lr, decay and momentum."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fmcore.config_sections import TrainerSection


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


@dataclass(frozen=True)
class StepSchedules:
    """The scheduled values of one step: learning rate, weight decay and EMA momentum."""

    lr: float
    weight_decay: float
    momentum: float


def peak_lr(trainer: TrainerSection, world_size: int) -> float:
    """``trainer.lr``, scaled to the global batch by ``trainer.lr_scaling`` (linear or sqrt)."""
    if trainer.lr_scaling is None:
        return trainer.lr
    global_batch = trainer.batch_size * trainer.grad_accum_steps * world_size
    ratio = global_batch / trainer.lr_reference_batch
    return trainer.lr * (ratio if trainer.lr_scaling == "linear" else math.sqrt(ratio))


def warmup_steps(trainer: TrainerSection) -> int:
    if trainer.warmup_fraction is not None:
        return round(trainer.warmup_fraction * trainer.max_steps)
    return trainer.warmup_steps


def schedules_at(trainer: TrainerSection, step: int, world_size: int) -> StepSchedules:
    """The trainer section's schedules at ``step`` of ``trainer.max_steps``."""
    total = trainer.max_steps
    lr = warmup_cosine(
        step, total, peak_lr(trainer, world_size), trainer.min_lr, warmup_steps(trainer)
    )
    weight_decay = warmup_cosine(step, total, trainer.weight_decay, trainer.weight_decay_end)
    momentum_start, momentum_end = trainer.ema_momentum
    return StepSchedules(lr, weight_decay, warmup_cosine(step, total, momentum_start, momentum_end))
