"""Few-shot evaluation against scikit-learn on the same draws, and ``fmcore eval eval=fewshot``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fmcore
from sklearn.metrics import accuracy_score
from sklearn.neighbors import NearestCentroid
from sklearn.preprocessing import normalize
from test_eval import CPU, TINY_ENCODER, _clusters

from fmcore.errors import ConfigError
from fmcore.eval.fewshot import draw_support, fewshot_metrics, nearest_mean_scores, summarize


def test_the_support_has_k_examples_per_class_nested_across_shot_counts() -> None:
    _, labels = _clusters(0, 300, classes=4)
    one, five = draw_support(labels, 4, 1, seed=0), draw_support(labels, 4, 5, seed=0)
    assert torch.bincount(labels[five], minlength=4).tolist() == [5, 5, 5, 5]
    assert len(set(five.tolist())) == 20
    assert set(one.tolist()) <= set(five.tolist())  # a seed's 5-shot draw extends its 1-shot
    assert not torch.equal(five, draw_support(labels, 4, 5, seed=1))
    with pytest.raises(ConfigError, match=r"200-shot needs 200 .* class 0: \d+, class 1"):
        draw_support(labels, 4, 200, seed=0)
    with pytest.raises(ConfigError, match=r"class 4: 0"):
        draw_support(labels, 5, 1, seed=0)  # a class missing from the training split


# One example per class leaves scikit-learn no within-class variance for its (unused) shrinkage.
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
def test_fewshot_equals_scikit_learn_nearest_centroid_on_the_same_draws() -> None:
    train_x, train_y = _clusters(4, 500, classes=5, spread=2.5)
    test_x, test_y = _clusters(5, 300, classes=5, spread=2.5)
    shots, seeds = [1, 5, 10], [0, 1, 2]
    results = fewshot_metrics(train_x, train_y, test_x, test_y, 5, shots=shots, seeds=seeds)

    for count in shots:
        accuracies = []
        for seed, metrics in zip(seeds, results[count], strict=True):
            support = draw_support(train_y, 5, count, seed).numpy()
            x, y = train_x.numpy()[support], train_y.numpy()[support]
            centre = x.mean(axis=0)  # SimpleShot's CL2N: centre on the support, then unit length
            reference = NearestCentroid().fit(normalize(x - centre), y)
            expected = reference.predict(normalize(test_x.numpy() - centre))
            ours = nearest_mean_scores(train_x[support], train_y[support], test_x, 5)
            np.testing.assert_array_equal(ours.argmax(dim=1).numpy(), expected)
            accuracies.append(accuracy_score(test_y.numpy(), expected))
            assert metrics["accuracy"] == pytest.approx(accuracies[-1], abs=1e-6)
        summary = summarize(results)
        assert summary["metrics"][f"accuracy_{count}shot"] == pytest.approx(np.mean(accuracies))
        assert summary["std"][f"accuracy_{count}shot"] == pytest.approx(np.std(accuracies, ddof=1))
    print({k: round(v, 3) for k, v in summarize(results)["metrics"].items() if "accuracy_" in k})
    means = summarize(results)["metrics"]
    assert 0.3 < means["accuracy_1shot"] < means["accuracy_10shot"]  # more shots, better


def test_fewshot_needs_several_seeds() -> None:
    x, y = _clusters(0, 100, classes=2)
    with pytest.raises(ConfigError, match=r"eval\.seeds must be two or more different seeds"):
        fewshot_metrics(x, y, x, y, 2, shots=[1], seeds=[3])
    with pytest.raises(ConfigError, match=r"eval\.shots must be positive"):
        fewshot_metrics(x, y, x, y, 2, shots=[0], seeds=[0, 1])


def test_fmcore_eval_fewshot_writes_means_and_deviations(tmp_path: Path) -> None:
    out = tmp_path / "fewshot"
    result = fmcore(
        "eval",
        "checkpoint=random",
        "domain=digits",
        "eval=fewshot",
        "eval.seeds=[0,1,2]",
        *TINY_ENCODER,
        *CPU,
        f"run.dir={out}",
        cwd=tmp_path,
    )
    report = json.loads((out / "eval.json").read_text())
    assert report["protocol"] == "fewshot" and report["settings"]["shots"] == [1, 5, 10]
    names = ("accuracy", "balanced_accuracy", "f1_macro", "auroc_macro")
    keys = {f"{name}_{k}shot" for name in names for k in (1, 5, 10)}
    assert set(report["metrics"]) == keys == set(report["std"])
    assert [len(report["per_seed"][f"{k}shot"]) for k in (1, 5, 10)] == [3, 3, 3]
    assert all(0.0 <= report["std"][key] < 0.2 for key in keys)
    assert 0.1 < report["metrics"]["accuracy_10shot"] <= 1.0
    assert "accuracy_10shot" in result.stdout and "std" in result.stdout
