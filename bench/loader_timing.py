"""Samples/s of a dataset through the engine's loader: ``ResumableBatchSampler`` batches through
``make_loader`` (worker processes, prefetching), after warm-up batches that absorb worker
start-up; and the machine record every loader bench's rows begin with. Shared by the loader
benches."""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
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
    # CPU time of this process and its workers (user + system) per sample, warm-up included:
    # what the loader costs whatever else holds the cores, where samples/s depends on them.
    cpu_ms_per_sample: float


def _cpu_seconds() -> float:
    """User + system time of this process and of its children that have been waited for."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_loader(
    dataset: Dataset, workers: int, batch: int, batches: int, warmup: int, seed: int
) -> LoaderTiming:
    sampler = ResumableBatchSampler(len(dataset), batch, seed)
    cpu_started = _cpu_seconds()
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
    gc.collect()  # the workers are joined (and their CPU time counted) when the loader goes
    cpu_ms = (_cpu_seconds() - cpu_started) * 1000 / ((warmup + batches) * batch)
    return LoaderTiming(samples / elapsed, first, skipped, cpu_ms)


def print_against_bare(
    domain: Dataset,
    bare: Dataset,
    workers: Sequence[int],
    timing: tuple[int, int, int],
    common: dict[str, Any],
    unit: str = "samples",
    rounds: int = 1,
) -> None:
    """One JSON line per worker count: ``unit``/s of the domain's loader and of a bare decode
    of the same references, their ratio and the domain's skipped samples. ``timing`` is
    (batch, timed batches, warm-up batches). With ``rounds`` > 1 the two arms alternate that
    many times and each keeps its best rate and its least CPU time per sample: on cores other
    jobs share, the best of several is the figure least disturbed by them. ``cpu_ratio`` is
    the bare arm's CPU time per sample over the domain's."""
    batch, batches, warmup = timing
    for count in workers:
        best = {"domain": 0.0, "bare": 0.0}
        cpu = {"domain": float("inf"), "bare": float("inf")}
        skipped = 0
        for _ in range(rounds):
            for name, dataset in (("domain", domain), ("bare", bare)):
                timed = time_loader(dataset, count, batch, batches, warmup, seed=0)
                best[name] = max(best[name], timed.samples_per_s)
                cpu[name] = min(cpu[name], timed.cpu_ms_per_sample)
                skipped += timed.skipped if name == "domain" else 0
        row = {
            **common,
            "workers": count,
            **{f"{n}_{unit}_per_s": round(rate, 1) for n, rate in best.items()},
            "ratio": round(best["domain"] / best["bare"], 2),
            **{f"{n}_cpu_ms_per_{unit[:-1]}": round(ms, 2) for n, ms in cpu.items()},
            "cpu_ratio": round(cpu["bare"] / cpu["domain"], 2),
            "rounds": rounds,
            "skipped": skipped,
        }
        print(json.dumps(row), flush=True)
