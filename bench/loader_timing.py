"""Samples/s of a dataset through the engine's loader: ``ResumableBatchSampler`` batches through
``make_loader`` (worker processes, prefetching), after warm-up batches that absorb worker
start-up. Shared by the loader benches."""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch.utils.data import Dataset

from fmcore.engine.data import ResumableBatchSampler, make_loader


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
