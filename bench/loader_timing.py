"""Samples/s of a dataset through the engine's loader: ``ResumableBatchSampler`` batches through
``make_loader`` (worker processes, prefetching), after warm-up batches that absorb worker
start-up; and the machine record every loader bench's rows begin with. Shared by the loader
benches."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
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


def print_against_bare(
    domain: Dataset,
    bare: Dataset,
    workers: Sequence[int],
    timing: tuple[int, int, int],
    common: dict[str, Any],
    unit: str = "samples",
) -> None:
    """One JSON line per worker count: ``unit``/s of the domain's loader and of a bare decode
    of the same references, their ratio and the domain's skipped samples. ``timing`` is
    (batch, timed batches, warm-up batches)."""
    batch, batches, warmup = timing
    for count in workers:
        rates = {
            name: time_loader(dataset, count, batch, batches, warmup, seed=0)
            for name, dataset in (("domain", domain), ("bare", bare))
        }
        row = {
            **common,
            "workers": count,
            **{f"{n}_{unit}_per_s": round(r.samples_per_s, 1) for n, r in rates.items()},
            "ratio": round(rates["domain"].samples_per_s / rates["bare"].samples_per_s, 2),
            "skipped": rates["domain"].skipped,
        }
        print(json.dumps(row), flush=True)
