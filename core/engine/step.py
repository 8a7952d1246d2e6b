"""One optimizer step: scheduled values, per-step seeds, micro-batches, clipping, the update.

All randomness of a step is re-seeded from (seed, step, rank), so a resumed run draws the same
views and masks as the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmcore.config_sections import TrainerSection
from fmcore.distributed import World
from fmcore.engine.data import BatchStream
from fmcore.engine.optimizer import apply_schedules, clip_gradients
from fmcore.engine.schedules import schedules_at
from fmcore.method import Method, StepContext


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank) % (2**63)


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()  # fp32 (TrainerSection checked the choice)


@dataclass
class OptimizerStep:
    """One optimizer step of a run: schedules, seeding, micro-batches, clipping, update."""

    trainer: TrainerSection
    seed: int  # run.seed
    world: World
    method: Method
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    views: Any
    stream: BatchStream
    checkpoints: Path  # named when the loss is not finite: what a resume starts from
    regularizer: Callable[[Method], torch.Tensor] | None
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device=self.world.device)

    def run(self, step: int) -> dict[str, float]:
        """Train step ``step``; its metrics (``step`` in them is the count of steps done)."""
        trainer, world = self.trainer, self.world
        started = time.perf_counter()
        schedules = schedules_at(trainer, step, world.size)
        apply_schedules(self.optimizer, schedules)
        seed = step_seed(self.seed, step, world.rank)
        torch.manual_seed(seed)
        self.generator.manual_seed(seed)
        ctx = StepContext(
            step,
            trainer.max_steps,
            schedules.lr,
            schedules.weight_decay,
            schedules.momentum,
            self.views,
            self.generator,
        )
        samples, loss, step_metrics = self._accumulate(ctx)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {step}: lower trainer.lr or check the data;"
                f" the last complete checkpoint in {self.checkpoints} is kept"
            )
        grad_norm = clip_gradients(self.method, trainer.clip_grad)
        self.method.before_optimizer_step(ctx)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step(ctx)

        elapsed = time.perf_counter() - started
        tokens = self.method.encoder.take_token_count()
        return {
            "step": step + 1,
            "loss": loss,
            "lr": schedules.lr,
            "weight_decay": schedules.weight_decay,
            "grad_norm": grad_norm,
            "samples_per_s": samples * world.size / elapsed,
            "tokens_per_s": tokens * world.size / elapsed,
            "skipped": self.stream.skipped,
            **{k: float(v) for k, v in step_metrics.items()},
        }

    def _accumulate(self, ctx: StepContext) -> tuple[int, float, dict[str, Any]]:
        """Forward and backward of every micro-batch of the step (DDP syncs on the last)."""
        trainer, world = self.trainer, self.world
        accumulation = trainer.grad_accum_steps
        samples, loss_sum, step_metrics = 0, 0.0, {}
        for micro in range(accumulation):
            batch = self.stream.next().to(world.device)
            sync = micro == accumulation - 1 or not world.distributed
            with (
                contextlib.nullcontext() if sync else self.model.no_sync(),
                precision_context(trainer.precision, world.device),
            ):
                out = self.model(batch, ctx)
            objective = out.loss
            if self.regularizer is not None:
                objective = objective + self.regularizer(self.method)
            (objective / accumulation).backward()
            samples += len(batch)
            loss_sum += float(out.loss.detach())
            step_metrics.update(out.metrics)
        return samples, loss_sum / accumulation, step_metrics
