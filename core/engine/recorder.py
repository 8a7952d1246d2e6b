"""What rank 0 does after each step: progress, metrics.jsonl, collapse warnings, the step hook
and periodic evaluation (``fmcore.eval.periodic`` builds it; the engine only calls it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig

from fmcore.collapse import CollapseWatch
from fmcore.domain import Domain
from fmcore.encoder import Encoder
from fmcore.engine.progress import MetricsLog, Progress
from fmcore.method import Method
from fmcore.plugin_manager import Registry


class StepEvaluation(Protocol):
    """What the engine calls on rank 0 after each step (``fmcore.eval.periodic``)."""

    def due(self, step: int, max_steps: int) -> bool: ...

    def run(self, encoder: Encoder, step: int, log: MetricsLog) -> dict[str, float]:
        """Evaluate, log one metrics.jsonl line and return its metrics (none: {})."""
        ...


# (config, domain, device, message) -> the run's evaluation, or None when it is off
EvaluationFactory = Callable[
    [DictConfig, Domain, torch.device, Callable[[str], None]], StepEvaluation | None
]


@dataclass
class StepRecorder:
    """Rank 0's bookkeeping after a step: progress, metrics.jsonl, collapse warnings, the
    ``fmcore_step_end`` hook and periodic evaluation."""

    progress: Progress
    metrics_log: MetricsLog
    evaluation: StepEvaluation | None
    registry: Registry
    method: Method
    run_dir: Path
    stop: int
    log_every: int
    collapse: CollapseWatch = field(default_factory=CollapseWatch)

    def record(self, done: int, metrics: dict[str, float]) -> None:
        max_steps = self.progress.total
        self.progress.update(done - 1, metrics)
        if done % self.log_every == 0 or done == self.stop:
            self.metrics_log.write(metrics)
            self.collapse.check(done, self.method.collapse_warnings(metrics, done / max_steps))
        evaluated: dict[str, float] = {}
        if self.evaluation is not None and self.evaluation.due(done, max_steps):
            evaluated = self.evaluation.run(self.method.export_encoder(), done, self.metrics_log)
        self.registry.hook.fmcore_step_end(
            step=done, metrics={**metrics, **evaluated}, run_dir=self.run_dir
        )
