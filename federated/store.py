"""The federation's global weights after every round, one safetensors file each, written atomically.

A restarted server continues from the newest complete round file; rounds.jsonl records what each
round cost and who took part.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fmcore.run_files import (
    FORMAT_KEY,
    ROUND_FORMAT,
    ROUND_KEY,
    ROUNDS_DIR,
    SERVER_OPTIMIZER_FORMAT,
    round_file_name,
    round_files,
)

ROUNDS_LOG = "rounds.jsonl"
GlobalState = dict[str, dict[str, np.ndarray]]  # group -> entry -> weights


@dataclass
class RoundStore:
    run_dir: Path

    @property
    def directory(self) -> Path:
        return self.run_dir / ROUNDS_DIR

    def path(self, server_round: int) -> Path:
        return self.directory / round_file_name(server_round)

    def optimizer_path(self, server_round: int) -> Path:
        return self.directory / f"server_optimizer_{server_round:04d}.safetensors"

    def save(
        self,
        server_round: int,
        state: GlobalState,
        optimizer: Mapping[str, np.ndarray] | None = None,
    ) -> Path:
        """The round's weights; with ``optimizer`` (the server optimizer's arrays) written first,
        so a complete round file always has its optimizer state beside it. Only the newest
        optimizer file is kept: it is as large as the model, twice for Adam's two moments."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if optimizer:
            path = self.optimizer_path(server_round)
            self._write(path, optimizer, server_round, SERVER_OPTIMIZER_FORMAT)
        final = self.path(server_round)
        self._write(final, flat_state(state), server_round, ROUND_FORMAT)
        for old in self.directory.glob("server_optimizer_*.safetensors"):
            if old != self.optimizer_path(server_round):
                old.unlink()
        return final

    def _write(
        self, final: Path, flat: Mapping[str, np.ndarray], server_round: int, kind: str
    ) -> None:
        partial = final.with_name(f".partial-{final.name}")
        arrays = {key: contiguous(value) for key, value in flat.items()}
        metadata = {FORMAT_KEY: kind, ROUND_KEY: str(server_round)}
        save_file(arrays, str(partial), metadata=metadata)
        os.replace(partial, final)

    def optimizer(self, server_round: int) -> dict[str, np.ndarray]:
        """The server optimizer's arrays saved with ``server_round`` (empty if none were)."""
        path = self.optimizer_path(server_round)
        return load_file(str(path)) if path.is_file() else {}

    def latest(self) -> tuple[int, GlobalState] | None:
        """The newest complete round and its weights, or None before the first round."""
        files = round_files(self.directory)
        if not files:
            return None
        last = max(files)
        return last, load_round(files[last])

    def log(self, record: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / ROUNDS_LOG, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` in C order with its shape kept: ``np.ascontiguousarray`` turns a 0-d array
    (a BatchNorm's ``num_batches_tracked``) into shape (1,)."""
    return np.require(array, requirements="C")


def load_round(path: Path) -> GlobalState:
    return grouped_state(load_file(str(path)))


def flat_state(state: GlobalState) -> dict[str, np.ndarray]:
    """Every group's entries under one name each, ``<group>/<entry>``: a round file, and the
    single model Flower's round loop carries."""
    return {
        f"{group}/{key}": value
        for group, entries in state.items()
        for key, value in entries.items()
    }


def grouped_state(flat: Mapping[str, np.ndarray]) -> GlobalState:
    """The inverse of :func:`flat_state`."""
    state: GlobalState = {}
    for name, value in flat.items():
        group, key = name.split("/", 1)
        state.setdefault(group, {})[key] = value
    return state
