"""The training loop: set-up, loop, checkpoint, in that order; one step reads top to bottom.

Every domain and method runs through :func:`train`; a federated site runs the same loop for its
local steps. Resuming is exact: the model, optimizer, data position and schedules come from the
checkpoint, and all per-step randomness is re-seeded from (seed, step, rank).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from fmcore.backbones.vit import VisionTransformer
from fmcore.collapse import CollapseWatch
from fmcore.config import to_yaml
from fmcore.distributed import World, init_world, shutdown_world
from fmcore.domain import Domain
from fmcore.encoder import Encoder
from fmcore.engine.checkpoint import (
    Checkpoint,
    CheckpointStore,
    load_method_state,
    load_partial_state,
)
from fmcore.engine.data import DomainDataset, ResumableBatchSampler, make_loader
from fmcore.engine.progress import MetricsLog, Progress
from fmcore.engine.schedules import warmup_cosine
from fmcore.errors import ConfigError, NoUsableSamples
from fmcore.factory import Parts, build_parts
from fmcore.io import atomic_write_text
from fmcore.method import Batch, Method, StepContext
from fmcore.plugin_manager import Registry
from fmcore.plugin_manager import registry as default_registry
from fmcore.run_files import (
    CHECKPOINTS_DIR,
    ENCODER_FILE,
    METRICS_FILE,
    RUN_CONFIG_FILE,
    SUMMARY_FILE,
    encoder_metadata,
    timestamped_run_dir,
    write_encoder,
)

SKIP_MESSAGES_SHOWN = 10


class StepEvaluation(Protocol):
    """What the engine calls on rank 0 after each step (``fmcore.eval.periodic``)."""

    def due(self, step: int, max_steps: int) -> bool: ...

    def run(self, encoder: Encoder, step: int, log: MetricsLog) -> None: ...


# (config, domain, device, message) -> the run's evaluation, or None when it is off
EvaluationFactory = Callable[
    [DictConfig, Domain, torch.device, Callable[[str], None]], StepEvaluation | None
]


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


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank) % (2**63)


def default_run_dir(config: DictConfig, world: World) -> Path:
    if config.run.dir:
        return Path(str(config.run.dir))
    run_dir = [timestamped_run_dir(str(config.domain.name), str(config.method.name))]
    if world.distributed:  # every rank must agree on the directory
        dist.broadcast_object_list(run_dir, src=0)
    return run_dir[0]


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ConfigError(f"trainer.precision must be auto, bf16 or fp32, not '{precision}'")


class BatchStream:
    """Pulls collated batches, dropping bad samples; counts and reports what it dropped."""

    def __init__(
        self,
        loader: Any,
        start_batch: int,
        skipped: int,
        progress: Progress,
        world: World,
        max_empty_batches: int,
    ) -> None:
        self.iterator: Iterator = iter(loader)
        self.batches_consumed = start_batch
        self.skipped = skipped
        self.progress = progress
        self.world = world
        self.max_empty_batches = max_empty_batches
        self.first_messages: list[str] = []

    def next(self) -> Batch:
        for _ in range(self.max_empty_batches):
            batch, messages = next(self.iterator)
            self.batches_consumed += 1
            self._count(messages)
            if batch is not None:
                return batch
        raise NoUsableSamples(
            f"no usable sample in {self.max_empty_batches} consecutive batches; first problems:\n  "
            + "\n  ".join(self.first_messages or ["(none reported)"])
        )

    def _count(self, messages: list[str]) -> None:
        for message in messages:
            self.skipped += 1
            if len(self.first_messages) < SKIP_MESSAGES_SHOWN:
                self.first_messages.append(message)
                if self.world.is_main:
                    self.progress.message(f"skipped bad sample: {message}")


def _set_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        group["weight_decay"] = weight_decay * group["weight_decay_scale"]


def peak_lr(trainer: DictConfig, world_size: int) -> float:
    """``trainer.lr``, scaled to the global batch by ``trainer.lr_scaling`` (linear or sqrt)."""
    rule = trainer.lr_scaling
    if rule is None:
        return float(trainer.lr)
    global_batch = int(trainer.batch_size) * int(trainer.grad_accum_steps) * world_size
    ratio = global_batch / float(trainer.lr_reference_batch)
    if rule == "linear":
        return float(trainer.lr) * ratio
    if rule == "sqrt":
        return float(trainer.lr) * math.sqrt(ratio)
    raise ConfigError(f"trainer.lr_scaling must be null, linear or sqrt, not '{rule}'")


def _schedules(trainer: DictConfig, step: int, world_size: int) -> tuple[float, float, float]:
    total = int(trainer.max_steps)
    lr = warmup_cosine(
        step, total, peak_lr(trainer, world_size), float(trainer.min_lr), _warmup_steps(trainer)
    )
    weight_decay = warmup_cosine(
        step, total, float(trainer.weight_decay), float(trainer.weight_decay_end)
    )
    momentum_start, momentum_end = (float(m) for m in trainer.ema_momentum)
    return lr, weight_decay, warmup_cosine(step, total, momentum_start, momentum_end)


def _clip(method: Method, max_norm: float | None) -> float:
    """Clip each of the method's clip groups to ``max_norm``; the largest norm before clipping."""
    if max_norm is None:
        return float("nan")
    norms = [
        torch.nn.utils.clip_grad_norm_(group, float(max_norm)) for group in method.clip_groups()
    ]
    return float(torch.stack(norms).max())


def _warmup_steps(trainer: DictConfig) -> int:
    if trainer.warmup_fraction is not None:
        return round(float(trainer.warmup_fraction) * int(trainer.max_steps))
    return int(trainer.warmup_steps)


def _make_optimizer(
    method: Method, trainer: DictConfig, device: torch.device
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        method.parameter_groups(),
        lr=float(trainer.lr),
        betas=tuple(float(b) for b in trainer.betas),
        fused=device.type == "cuda",
    )


def _compile_trunks(method: Method) -> None:
    for module in method.modules():
        if isinstance(module, VisionTransformer):
            module.compile()


def _encoder_metadata(config: DictConfig, parts: Parts, step: int) -> dict[str, str]:
    return encoder_metadata(
        step=step,
        modality=parts.modality.name,
        domain=str(config.domain.name),
        encoder_yaml=OmegaConf.to_yaml(config.encoder),
        data_yaml=OmegaConf.to_yaml(config.data),
        features=str(config.method.get("features") or "cls"),
    )


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
    trainer = config.trainer
    world = init_world(str(trainer.device))
    try:
        return _train(config, registry, trainer, world, local_round, evaluation)
    finally:
        shutdown_world(world)


def _train(
    config: DictConfig,
    registry: Registry,
    trainer: DictConfig,
    world: World,
    local_round: LocalRound | None,
    make_evaluation: EvaluationFactory | None,
) -> TrainResult:
    # --- set-up ------------------------------------------------------------------------------
    run_dir = default_run_dir(config, world)
    config.run.dir = str(run_dir)
    store = CheckpointStore(run_dir / CHECKPOINTS_DIR, keep=int(trainer.keep_checkpoints))
    checkpoint = store.latest()
    if config.resume and checkpoint is None:
        raise ConfigError(f"resume=true but {run_dir} holds no complete checkpoint to resume from")
    if not config.resume and checkpoint is not None:
        raise ConfigError(
            f"{run_dir} already holds checkpoints: add resume=true to continue that run,"
            " or choose another run.dir"
        )

    # Subnormal floats (from blur kernel tails, tiny Adam moments) slow CPU math by 10-30x.
    torch.set_flush_denormal(True)
    torch.manual_seed(int(config.run.seed))  # identical initial weights on every rank
    parts = build_parts(config, registry)
    if world.is_main:
        refs = parts.domain.index("train")  # writes the embedded sample data once
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

    method = parts.method.to(world.device)
    optimizer = _make_optimizer(method, trainer, world.device)
    start_step, start_batch, skipped = 0, 0, 0
    if checkpoint is not None:
        load_method_state(method, checkpoint)
        optimizer.load_state_dict(checkpoint.optimizer_state())
        state = checkpoint.trainer_state()
        if len(state["ranks"]) != world.size:
            raise ConfigError(
                f"{checkpoint.path} was written by {len(state['ranks'])} process(es); resume it"
                f" with the same number (now {world.size}), so every rank continues its own data"
            )
        start_step = state["step"]
        start_batch = state["ranks"][world.rank]["batches_consumed"]
        skipped = state["ranks"][world.rank]["skipped"]
    if local_round is not None:
        load_partial_state(method, local_round.global_state)
        start_step = local_round.first_step
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / RUN_CONFIG_FILE, to_yaml(config))
    if trainer.compile:
        _compile_trunks(method)
    model: torch.nn.Module = (
        DistributedDataParallel(
            method, device_ids=[world.local_rank] if world.device.type == "cuda" else None
        )
        if world.distributed
        else method
    )

    batch_size = int(trainer.batch_size)
    sampler = ResumableBatchSampler(
        len(refs), batch_size, int(config.run.seed), world.rank, world.size, start_batch
    )
    loader = make_loader(
        DomainDataset(parts.domain, refs),
        sampler,
        int(trainer.num_workers),
        world.device.type == "cuda",
    )
    max_steps = int(trainer.max_steps)
    stop = max_steps if local_round is None else min(max_steps, start_step + local_round.steps)
    if stop <= start_step:
        raise ConfigError(
            f"nothing to train: step {start_step} is at trainer.max_steps={max_steps}"
        )
    progress = Progress(
        max_steps,
        start_step,
        str(trainer.progress) if world.is_main else "none",
        int(trainer.log_every),
    )
    metrics_log = (
        MetricsLog(run_dir / METRICS_FILE, checkpoint.step if checkpoint else None)
        if world.is_main
        else None
    )
    evaluation = (
        make_evaluation(config, parts.domain, world.device, progress.message)
        if world.is_main and make_evaluation is not None
        else None
    )
    stream = BatchStream(
        loader,
        start_batch,
        skipped,
        progress,
        world,
        max_empty_batches=max(10, 2 * math.ceil(len(refs) / batch_size)),
    )
    generator = torch.Generator(device=world.device)
    accumulation = int(trainer.grad_accum_steps)
    registry.hook.fmcore_train_start(config=config, run_dir=run_dir, world_size=world.size)
    collapse = CollapseWatch()

    # --- loop --------------------------------------------------------------------------------
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    for step in range(start_step, stop):
        step_started = time.perf_counter()
        lr, weight_decay, momentum = _schedules(trainer, step, world.size)
        _set_schedules(optimizer, lr, weight_decay)
        seed = step_seed(int(config.run.seed), step, world.rank)
        torch.manual_seed(seed)
        generator.manual_seed(seed)
        ctx = StepContext(step, max_steps, lr, weight_decay, momentum, parts.views, generator)

        samples, loss_sum, step_metrics = 0, 0.0, {}
        for micro in range(accumulation):
            batch = stream.next().to(world.device)
            sync = micro == accumulation - 1 or not world.distributed
            with (
                contextlib.nullcontext() if sync else model.no_sync(),
                precision_context(str(trainer.precision), world.device),
            ):
                out = model(batch, ctx)
            objective = out.loss
            if local_round is not None and local_round.regularizer is not None:
                objective = objective + local_round.regularizer(method)
            (objective / accumulation).backward()
            samples += len(batch)
            loss_sum += float(out.loss.detach())
            step_metrics.update(out.metrics)
        loss = loss_sum / accumulation
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {step}: lower trainer.lr or check the data;"
                f" the last complete checkpoint in {store.directory} is kept"
            )
        grad_norm = _clip(method, trainer.clip_grad)
        method.before_optimizer_step(ctx)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(ctx)

        elapsed = time.perf_counter() - step_started
        tokens = method.encoder.take_token_count()
        metrics = {
            "step": step + 1,
            "loss": loss,
            "lr": lr,
            "weight_decay": weight_decay,
            "grad_norm": grad_norm,
            "samples_per_s": samples * world.size / elapsed,
            "tokens_per_s": tokens * world.size / elapsed,
            "skipped": stream.skipped,
            **{k: float(v) for k, v in step_metrics.items()},
        }
        done = step + 1
        if world.is_main:
            progress.update(step, metrics)
            if done % int(trainer.log_every) == 0 or done == stop:
                metrics_log.write(metrics)
                collapse.check(done, method.collapse_warnings(metrics, done / max_steps))
            registry.hook.fmcore_step_end(step=done, metrics=metrics, run_dir=run_dir)
            if evaluation is not None and evaluation.due(done, max_steps):
                evaluation.run(method.export_encoder(), done, metrics_log)
        if done % int(trainer.checkpoint_every) == 0 or done == stop:
            saved = _save(store, method, optimizer, done, stream, world)
            if saved is not None:
                registry.hook.fmcore_checkpoint_saved(
                    step=done,
                    path=saved.path,
                    run_dir=run_dir,
                    method=method,
                    domain=parts.domain,
                    config=config,
                )
            world.barrier()

    # --- end ---------------------------------------------------------------------------------
    progress.close()
    total_skipped = int(world.all_reduce_sum(stream.skipped))
    summary = {
        "steps": stop,
        "skipped_samples": total_skipped,
        "skipped_examples": stream.first_messages,
        "skipped_inputs": parts.domain.bad_inputs,
        "seconds": time.perf_counter() - started,
        "last_metrics": metrics,
    }
    if world.is_main:
        encoder = method.export_encoder()
        write_encoder(
            encoder.state_dict(),
            run_dir / ENCODER_FILE,
            _encoder_metadata(config, parts, stop),
        )
        atomic_write_text(run_dir / SUMMARY_FILE, _json(summary))
        if total_skipped or parts.domain.bad_inputs:
            progress.message(
                f"{len(parts.domain.bad_inputs)} bad input(s) and {total_skipped} bad sample(s)"
                f" skipped; see {run_dir / SUMMARY_FILE}"
            )
    registry.hook.fmcore_train_end(summary=summary, run_dir=run_dir)
    world.barrier()  # no rank tears down the process group while another still writes or talks
    return TrainResult(
        run_dir, stop, total_skipped, metrics, method, len(refs), parts.modality.name
    )


def _save(
    store: CheckpointStore,
    method: Method,
    optimizer: torch.optim.Optimizer,
    step: int,
    stream: BatchStream,
    world: World,
) -> Checkpoint | None:
    """Rank 0 writes the checkpoint (returned; None on the other ranks)."""
    # Every rank has its own data position and skip count; rank 0 writes them all.
    ranks = world.gather({"batches_consumed": stream.batches_consumed, "skipped": stream.skipped})
    if not world.is_main:
        return None
    return store.save(step, method.state_dict(), optimizer.state_dict(), {"ranks": ranks})


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, default=str)
