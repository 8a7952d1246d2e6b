"""Bootstrap intervals against a bootstrap written with NumPy and scikit-learn, and against the
normal approximation of a proportion's interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from fmcore.eval.bootstrap import bootstrap_indices, confidence_intervals, metrics_with_intervals


def _scored(n: int, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities better than chance, far from perfect, for ``n`` labelled samples."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    logits = torch.randn(n, classes, generator=generator)
    logits[torch.arange(n), labels] += 1.0
    return logits.softmax(dim=1), labels


def test_intervals_equal_a_numpy_bootstrap_on_the_same_indices() -> None:
    scores, labels = _scored(300)
    intervals = confidence_intervals(scores, labels, 4, resamples=200, seed=7)
    indices = torch.cat(list(bootstrap_indices(300, 200, seed=7))).numpy()
    assert indices.shape == (200, 300)
    p, y = scores.numpy().astype(np.float64), labels.numpy()
    reference = {
        "accuracy": lambda i: np.mean(p[i].argmax(1) == y[i]),
        "balanced_accuracy": lambda i: balanced_accuracy_score(y[i], p[i].argmax(1)),
        "f1_macro": lambda i: f1_score(y[i], p[i].argmax(1), average="macro"),
        "auroc_macro": lambda i: roc_auc_score(y[i], p[i], multi_class="ovr", average="macro"),
    }
    assert set(intervals) == set(reference)
    for name, metric in reference.items():
        values = [metric(row) for row in indices]
        expected = np.percentile(values, [2.5, 97.5])
        np.testing.assert_allclose(intervals[name], expected, atol=1e-5, err_msg=name)


def test_the_accuracy_interval_matches_the_normal_approximation() -> None:
    scores, labels = _scored(400, seed=1)
    report = metrics_with_intervals(scores, labels, 4, resamples=1000, seed=0)
    accuracy = report["metrics"]["accuracy"]
    low, high = report["ci95"]["accuracy"]
    half_width = 1.96 * np.sqrt(accuracy * (1 - accuracy) / 400)
    assert low < accuracy < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert (low + high) / 2 == pytest.approx(accuracy, abs=0.01)
    for name, (low, high) in report["ci95"].items():
        assert low <= report["metrics"][name] <= high, name


def test_resamples_are_seeded_chunked_and_optional() -> None:
    chunks = list(bootstrap_indices(100_000, 100, seed=3))
    assert len(chunks) > 1 and sum(len(chunk) for chunk in chunks) == 100
    again = torch.cat(list(bootstrap_indices(100_000, 100, seed=3)))
    assert torch.equal(torch.cat(chunks), again)
    assert not torch.equal(torch.cat(chunks), torch.cat(list(bootstrap_indices(100_000, 100, 4))))
    scores, labels = _scored(50)
    assert set(metrics_with_intervals(scores, labels, 4, resamples=0, seed=0)) == {"metrics"}
