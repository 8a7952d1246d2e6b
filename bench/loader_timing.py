"""Samples/s of a dataset through the engine's loader: ``ResumableBatchSampler`` batches through
``make_loader`` (worker processes, prefetching), after warm-up batches that absorb worker
start-up; and the machine record every loader bench's rows begin with. Shared by the loader
benches."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from datetime import date
from typing import Any

import torch
from torch.utils.data import Dataset

from fmcore.engine.data import ResumableBatchSampler, make_loader


def machine_record() -> dict[str, Any]:
    """Date, machine (architecture, cores, torch) and load average: what a row's figures
    depend on besides the files."""
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_average": round(os.getloadavg()[0], 2),
    }


@dataclass(frozen=True)
class LoaderTiming:
    samples_per_s: float
    first_batches_s: float  # worker start-up and the warm-up batches
    skipped: int


def time_loader(
    dataset: Dataset, workers: int, batch: int, batches: int, warmup: int, seed: int
) -> LoaderTiming:
    sampler = ResumableBatchSampler(len(dataset), batch, seed)
    loader = make_loader(dataset, sampler, workers, pin_memory=False)
    started = time.perf_counter()
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    first = time.perf_counter() - started
    samples, skipped = 0, 0
    started = time.perf_counter()
    for _ in range(batches):
        data, messages = next(iterator)
        samples += len(data)
        skipped += len(messages)
    elapsed = time.perf_counter() - started
    del iterator, loader
    return LoaderTiming(samples / elapsed, first, skipped)
