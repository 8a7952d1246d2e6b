"""Bootstrap confidence intervals of the classification metrics.

The test set is resampled with replacement, every metric is recomputed on each resample, and the
2.5th and 97.5th percentiles of those values bound the 95% interval (the percentile bootstrap,
Efron and Tibshirani 1993). It measures how much a metric depends on which test samples were
drawn, not the variance of training the classifier.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from fmcore.eval.metrics import classification_metrics, resampled_metrics

CONFIDENCE = 0.95
INDICES_PER_CHUNK = 1 << 22  # bounds the (resamples, samples) index chunk to 32 MiB


def bootstrap_indices(size: int, resamples: int, seed: int) -> Iterator[Tensor]:
    """Rows of ``size`` indices drawn with replacement, ``resamples`` rows in all, in chunks."""
    generator = torch.Generator().manual_seed(seed)
    rows_per_chunk = max(1, INDICES_PER_CHUNK // max(1, size))
    for start in range(0, resamples, rows_per_chunk):
        rows = min(rows_per_chunk, resamples - start)
        yield torch.randint(0, size, (rows, size), generator=generator)


def confidence_intervals(
    scores: Tensor, labels: Tensor, num_classes: int, *, resamples: int, seed: int
) -> dict[str, list[float]]:
    """Each metric's 95% percentile-bootstrap interval [low, high] over ``resamples`` resamples."""
    chunks = [
        resampled_metrics(scores, labels, num_classes, indices)
        for indices in bootstrap_indices(len(labels), resamples, seed)
    ]
    tail = (1.0 - CONFIDENCE) / 2
    quantiles = torch.tensor([tail, 1.0 - tail], dtype=torch.float64)
    intervals = {}
    for name in chunks[0]:
        values = torch.cat([chunk[name] for chunk in chunks]).double()
        intervals[name] = [float(bound) for bound in values.quantile(quantiles)]
    return intervals


def metrics_with_intervals(
    scores: Tensor, labels: Tensor, num_classes: int, *, resamples: int, seed: int
) -> dict[str, Any]:
    """``metrics`` of the test set and, unless ``resamples`` is 0, their ``ci95`` beside them:
    the part of ``eval.json`` every protocol that scores one test set reports."""
    report: dict[str, Any] = {"metrics": classification_metrics(scores, labels, num_classes)}
    if resamples > 0:
        report["ci95"] = confidence_intervals(
            scores, labels, num_classes, resamples=resamples, seed=seed
        )
    return report
