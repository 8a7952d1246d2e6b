"""Checkpoints: safetensors for tensors, JSON for trainer state, written atomically.

A checkpoint is a directory ``checkpoints/step_<N>/`` holding ``model.safetensors`` (the method's
whole state dict), ``optimizer.safetensors`` + ``optimizer.json`` and ``trainer.json``. It is
written under a temporary name and renamed into place only when complete, so a crash at any
moment leaves the previous checkpoint intact, and a resume never sees a partial one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from fmcore.distributed import World
from fmcore.errors import ConfigError
from fmcore.io import PARTIAL_PREFIX, fsync_path, partial_path, save_tensors

CHECKPOINT_PREFIX = "step_"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
TRAINER_JSON = "trainer.json"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class Checkpoint:
    """A complete checkpoint on disk."""

    path: Path

    @property
    def step(self) -> int:
        return int(self.path.name.removeprefix(CHECKPOINT_PREFIX))

    def model_state(self) -> dict[str, Tensor]:
        return load_file(str(self.path / MODEL_FILE))

    def optimizer_state(self) -> dict[str, Any]:
        meta = json.loads((self.path / OPTIMIZER_JSON).read_text())
        return _unflatten_optimizer(load_file(str(self.path / OPTIMIZER_TENSORS)), meta)

    def trainer_state(self) -> dict[str, Any]:
        return json.loads((self.path / TRAINER_JSON).read_text())


class CheckpointStore:
    """The ``checkpoints/`` directory of a run (``run_files.CHECKPOINTS_DIR``)."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = directory
        self.keep = max(1, keep)

    def save(
        self,
        step: int,
        model: dict[str, Tensor],
        optimizer: dict[str, Any],
        trainer: dict[str, Any],
    ) -> Checkpoint:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{CHECKPOINT_PREFIX}{step:08d}"
        final = self.directory / name
        partial = partial_path(final)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        save_tensors(model, partial / MODEL_FILE, metadata={"step": str(step)})
        optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer)
        save_tensors(optimizer_tensors, partial / OPTIMIZER_TENSORS)
        (partial / OPTIMIZER_JSON).write_text(json.dumps(optimizer_meta))
        (partial / TRAINER_JSON).write_text(json.dumps({**trainer, "step": step}, indent=2))
        for file in partial.iterdir():  # data on disk before the rename makes the step visible
            fsync_path(file)
        fsync_path(partial)
        if final.exists():  # a re-run of the same step after a crash past the rename
            shutil.rmtree(final)
        os.replace(partial, final)
        fsync_path(self.directory)
        self._prune()
        return Checkpoint(final)

    def complete(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first (partial directories are never listed)."""
        if not self.directory.is_dir():
            return []
        found = [
            Checkpoint(p)
            for p in self.directory.iterdir()
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_JSON).exists()
        ]
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Checkpoint | None:
        complete = self.complete()
        return complete[-1] if complete else None

    def _prune(self) -> None:
        for checkpoint in self.complete()[: -self.keep]:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
        for partial in self.directory.glob(f"{PARTIAL_PREFIX}*"):
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)


def load_method_state(module: torch.nn.Module, checkpoint: Checkpoint) -> None:
    try:
        missing, unexpected = module.load_state_dict(checkpoint.model_state(), strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ConfigError(
            f"checkpoint {checkpoint.path} does not fit this run's model: {error}"
        ) from error
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {checkpoint.path} does not match this run's model:"
            f" missing {missing[:5]}, unexpected {unexpected[:5]} (was the config changed?)"
        )


def load_partial_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load some of a module's entries (a federated round's global weights) over the others."""
    own = module.state_dict()
    unknown = sorted(set(state) - set(own))
    misshapen = [
        f"{key} {list(state[key].shape)} where the model has {list(own[key].shape)}"
        for key in state
        if key in own and own[key].shape != state[key].shape
    ]
    if unknown or misshapen:
        raise ConfigError(
            f"received weights do not fit this model: unknown {unknown[:5]}, wrong shape:"
            f" {'; '.join(misshapen[:5]) or 'none'} (do all sites run the same method and"
            " encoder?)"
        )
    module.load_state_dict(state, strict=False)


@dataclass
class Position:
    """Where a run stands: the next step, and this rank's data position and skip count."""

    step: int = 0
    batches_consumed: int = 0
    skipped: int = 0


def restore(
    checkpoint: Checkpoint, module: torch.nn.Module, optimizer: torch.optim.Optimizer, world: World
) -> Position:
    """Load a checkpoint's weights and optimizer state; this rank's position in the run."""
    load_method_state(module, checkpoint)
    optimizer.load_state_dict(checkpoint.optimizer_state())
    state = checkpoint.trainer_state()
    if len(state["ranks"]) != world.size:
        raise ConfigError(
            f"{checkpoint.path} was written by {len(state['ranks'])} process(es); resume it"
            f" with the same number (now {world.size}), so every rank continues its own data"
        )
    rank_state = state["ranks"][world.rank]
    return Position(state["step"], rank_state["batches_consumed"], rank_state["skipped"])


def save_checkpoint(
    store: CheckpointStore,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    batches_consumed: int,
    skipped: int,
    world: World,
) -> Checkpoint | None:
    """Rank 0 writes the checkpoint (returned; None on the other ranks). Every rank has its own
    data position (batches consumed, samples skipped): rank 0 writes them all."""
    ranks = world.gather({"batches_consumed": batches_consumed, "skipped": skipped})
    if not world.is_main:
        return None
    return store.save(step, module.state_dict(), optimizer.state_dict(), {"ranks": ranks})
