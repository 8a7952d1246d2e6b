"""The training loop: set-up, loop, checkpoint, in that order; one step reads top to bottom.

Every domain and method runs through :func:`train`; a federated site runs the same loop for its
local steps. Resuming is exact: the model, optimizer, data position and schedules come from the
checkpoint, and all per-step randomness is re-seeded from (seed, step, rank).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from fmcore.backbones.trunk import Trunk
from fmcore.config import to_yaml
from fmcore.config_sections import TrainerSection, trainer_section
from fmcore.distributed import World, init_world, shutdown_world
from fmcore.domain import Domain
from fmcore.engine.checkpoint import (
    Checkpoint,
    CheckpointStore,
    Position,
    load_partial_state,
    restore,
    save_checkpoint,
)
from fmcore.engine.data import BatchStream, DomainDataset, ResumableBatchSampler, make_loader
from fmcore.engine.optimizer import make_optimizer
from fmcore.engine.progress import MetricsLog, Progress
from fmcore.engine.recorder import EvaluationFactory, StepRecorder
from fmcore.engine.step import OptimizerStep
from fmcore.errors import ConfigError, NoUsableSamples
from fmcore.factory import Parts, build_parts, run_encoder_metadata
from fmcore.io import atomic_write_text
from fmcore.method import Method
from fmcore.plugin_manager import Registry
from fmcore.plugin_manager import registry as default_registry
from fmcore.run_files import (
    CHECKPOINTS_DIR,
    ENCODER_FILE,
    METRICS_FILE,
    RUN_CONFIG_FILE,
    SUMMARY_FILE,
    timestamped_run_dir,
    write_encoder,
)


@dataclass
class LocalRound:
    """What a federated site asks of the engine for one round (see fmcore.federated.site).

    The run's schedules still span ``trainer.max_steps``; the round covers steps ``first_step``
    to ``first_step + steps`` of them whatever step the site's last checkpoint is at (a site that
    missed rounds, or a server that redoes one, stays on the federation's schedule). The
    checkpoint gives the optimizer state and data position; ``global_state`` is loaded over its
    weights.
    """

    first_step: int
    steps: int
    global_state: dict[str, torch.Tensor]
    select_refs: Callable[[Domain, list[Any]], list[Any]] | None = None
    regularizer: Callable[[Method], torch.Tensor] | None = None


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    skipped: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    method: Method | None = None
    examples: int = 0  # training samples this process indexed (a federated site's weight)
    modality: str = ""

    @property
    def encoder_path(self) -> Path:
        return self.run_dir / ENCODER_FILE


def default_run_dir(config: DictConfig, world: World) -> Path:
    if config.run.dir:
        return Path(str(config.run.dir))
    run_dir = [timestamped_run_dir(str(config.domain.name), str(config.method.name))]
    if world.distributed:  # every rank must agree on the directory
        dist.broadcast_object_list(run_dir, src=0)
    return run_dir[0]


def _compile_trunks(method: Method) -> None:
    for module in method.modules():
        if isinstance(module, Trunk):
            module.compile()


def train(
    config: DictConfig,
    registry: Registry | None = None,
    local_round: LocalRound | None = None,
    evaluation: EvaluationFactory | None = None,
) -> TrainResult:
    """Run (or resume) one training run described by a resolved config; with ``local_round``,
    only a federated site's next round of it. ``evaluation`` builds what scores the encoder
    during training (``fmcore.eval.periodic.periodic_evaluation`` reads ``eval.every_steps``)."""
    registry = registry or default_registry()
    if evaluation is None and OmegaConf.select(config, "eval.every_steps", default=0):
        raise ConfigError(
            "eval.every_steps is set but train() was given no evaluation: pass"
            " evaluation=fmcore.eval.periodic.periodic_evaluation (fmcore train does)"
        )
    trainer = trainer_section(config)
    world = init_world(trainer.device)
    try:
        return _train(config, registry, trainer, world, local_round, evaluation)
    finally:
        shutdown_world(world)


def _open_run(
    config: DictConfig, trainer: TrainerSection, world: World
) -> tuple[Path, CheckpointStore, Checkpoint | None]:
    """The run directory, its checkpoint store, and the checkpoint to resume (``resume=true``)."""
    run_dir = default_run_dir(config, world)
    config.run.dir = str(run_dir)
    store = CheckpointStore(run_dir / CHECKPOINTS_DIR, keep=trainer.keep_checkpoints)
    checkpoint = store.latest()
    if config.resume and checkpoint is None:
        raise ConfigError(f"resume=true but {run_dir} holds no complete checkpoint to resume from")
    if not config.resume and checkpoint is not None:
        raise ConfigError(
            f"{run_dir} already holds checkpoints: add resume=true to continue that run,"
            " or choose another run.dir"
        )
    return run_dir, store, checkpoint


def _training_refs(
    parts: Parts, config: DictConfig, world: World, local_round: LocalRound | None
) -> list[Any]:
    """The train split's references (rank 0 indexes first: it writes embedded sample data)."""
    if world.is_main:
        refs = parts.domain.index("train")
    world.barrier()
    if not world.is_main:
        refs = parts.domain.index("train")
    if local_round is not None and local_round.select_refs is not None:
        refs = local_round.select_refs(parts.domain, refs)
    if world.is_main:
        for message in parts.domain.bad_inputs:
            print(f"skipped bad input: {message}", file=sys.stderr, flush=True)
    if not refs:
        problems = "".join(f"\n  {m}" for m in parts.domain.bad_inputs)
        raise NoUsableSamples(
            f"domain '{parts.domain.name}' found no usable samples"
            f" (data.root={config.data.root}){problems}"
        )
    return refs


def _stop_step(max_steps: int, start_step: int, local_round: LocalRound | None) -> int:
    stop = max_steps if local_round is None else min(max_steps, start_step + local_round.steps)
    if stop <= start_step:
        raise ConfigError(
            f"nothing to train: step {start_step} is at trainer.max_steps={max_steps}"
        )
    return stop


def _batch_stream(
    parts: Parts,
    refs: list[Any],
    trainer: TrainerSection,
    seed: int,
    world: World,
    position: Position,
    report: Callable[[str], None] | None,
) -> BatchStream:
    """This rank's batches from ``position`` on, in the order an uninterrupted run sees them."""
    batch_size = trainer.batch_size
    sampler = ResumableBatchSampler(
        len(refs),
        batch_size,
        seed,
        world.rank,
        world.size,
        position.batches_consumed,
    )
    loader = make_loader(
        DomainDataset(parts.domain, refs),
        sampler,
        trainer.num_workers,
        world.device.type == "cuda",
    )
    return BatchStream(
        loader,
        position.batches_consumed,
        position.skipped,
        max_empty_batches=max(10, 2 * math.ceil(len(refs) / batch_size)),
        report=report,
    )


def _distributed_model(method: Method, world: World) -> torch.nn.Module:
    if not world.distributed:
        return method
    device_ids = [world.local_rank] if world.device.type == "cuda" else None
    return DistributedDataParallel(method, device_ids=device_ids)


@dataclass
class _Run:
    """The parts of one run that every stage of :func:`_train` works on."""

    config: DictConfig
    trainer: TrainerSection
    registry: Registry
    world: World
    parts: Parts
    method: Method
    optimizer: torch.optim.Optimizer
    run_dir: Path
    store: CheckpointStore


def _train(
    config: DictConfig,
    registry: Registry,
    trainer: TrainerSection,
    world: World,
    local_round: LocalRound | None,
    make_evaluation: EvaluationFactory | None,
) -> TrainResult:
    run_dir, store, checkpoint = _open_run(config, trainer, world)
    # Subnormal floats (from blur kernel tails, tiny Adam moments) slow CPU math by 10-30x.
    torch.set_flush_denormal(True)
    torch.manual_seed(int(config.run.seed))  # identical initial weights on every rank
    parts = build_parts(config, registry, fresh_start=checkpoint is None and local_round is None)
    refs = _training_refs(parts, config, world, local_round)
    method = parts.method.to(world.device)
    optimizer = make_optimizer(method, trainer, world.device)
    run = _Run(config, trainer, registry, world, parts, method, optimizer, run_dir, store)
    position = restore(checkpoint, method, optimizer, world) if checkpoint else Position()
    if local_round is not None:
        load_partial_state(method, local_round.global_state)
        position.step = local_round.first_step
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / RUN_CONFIG_FILE, to_yaml(config))
    if trainer.compile:
        _compile_trunks(method)

    stop = _stop_step(trainer.max_steps, position.step, local_round)
    progress = Progress(
        trainer.max_steps,
        position.step,
        trainer.progress if world.is_main else "none",
        trainer.log_every,
    )
    seed = int(config.run.seed)
    report = progress.message if world.is_main else None
    stream = _batch_stream(parts, refs, trainer, seed, world, position, report)
    optimizer_step = OptimizerStep(
        trainer,
        seed,
        world,
        method,
        _distributed_model(method, world),
        optimizer,
        parts.views,
        stream,
        store.directory,
        local_round.regularizer if local_round is not None else None,
    )
    recorder = _recorder(run, progress, checkpoint, stop, make_evaluation)
    registry.hook.fmcore_train_start(config=config, run_dir=run_dir, world_size=world.size)

    started = time.perf_counter()
    metrics: dict[str, float] = {}
    for step in range(position.step, stop):
        metrics = optimizer_step.run(step)
        done = step + 1
        if recorder is not None:
            recorder.record(done, metrics)
        if done % trainer.checkpoint_every == 0 or done == stop:
            _checkpoint(run, done, stream)
    progress.close()
    summary = {
        "steps": stop,
        "skipped_samples": int(world.all_reduce_sum(stream.skipped)),
        "skipped_examples": stream.first_messages,
        "skipped_inputs": parts.domain.bad_inputs,
        "seconds": time.perf_counter() - started,
        "last_metrics": metrics,
    }
    _finish(run, summary)
    return TrainResult(
        run_dir, stop, summary["skipped_samples"], metrics, method, len(refs), parts.modality.name
    )


def _recorder(
    run: _Run,
    progress: Progress,
    checkpoint: Checkpoint | None,
    stop: int,
    make_evaluation: EvaluationFactory | None,
) -> StepRecorder | None:
    """Rank 0's step recorder (None on the other ranks); metrics.jsonl resumes at the checkpoint."""
    if not run.world.is_main:
        return None
    evaluation = (
        make_evaluation(run.config, run.parts.domain, run.world.device, progress.message)
        if make_evaluation is not None
        else None
    )
    return StepRecorder(
        progress,
        MetricsLog(run.run_dir / METRICS_FILE, checkpoint.step if checkpoint else None),
        evaluation,
        run.registry,
        run.method,
        run.run_dir,
        stop,
        run.trainer.log_every,
    )


def _checkpoint(run: _Run, step: int, stream: BatchStream) -> None:
    """Save the run's state at ``step`` and tell the plugins; every rank waits for the save."""
    saved = save_checkpoint(
        run.store,
        run.method,
        run.optimizer,
        step,
        stream.batches_consumed,
        stream.skipped,
        run.world,
    )
    if saved is not None:
        run.registry.hook.fmcore_checkpoint_saved(
            step=step,
            path=saved.path,
            run_dir=run.run_dir,
            method=run.method,
            domain=run.parts.domain,
            config=run.config,
        )
    run.world.barrier()


def _finish(run: _Run, summary: dict[str, Any]) -> None:
    """Write the encoder and the run's summary; tell the plugins; every rank leaves together."""
    run_dir, domain = run.run_dir, run.parts.domain
    if run.world.is_main:
        encoder = run.method.export_encoder()
        metadata = run_encoder_metadata(run.config, run.parts.modality.name, int(summary["steps"]))
        write_encoder(encoder.state_dict(), run_dir / ENCODER_FILE, metadata)
        atomic_write_text(run_dir / SUMMARY_FILE, _json(summary))
        if summary["skipped_samples"] or domain.bad_inputs:
            print(
                f"{len(domain.bad_inputs)} bad input(s) and {summary['skipped_samples']} bad"
                f" sample(s) skipped; see {run_dir / SUMMARY_FILE}",
                file=sys.stderr,
                flush=True,
            )
    run.registry.hook.fmcore_train_end(summary=summary, run_dir=run_dir)
    run.world.barrier()  # no rank tears down the process group while another still writes


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, default=str)
