"""Evaluation protocols against scikit-learn, and ``fmcore eval`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fmcore
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from fmcore.eval.knn import knn_predict, knn_scores
from fmcore.eval.linear import linear_probe
from fmcore.eval.metrics import classification_metrics
from fmcore.eval.svm import svm_probe
from fmcore.eval.sweep import stratified_split


def _clusters(seed: int, n: int, classes: int = 5, dim: int = 16, spread: float = 1.5):
    """Gaussian clusters that overlap, so neither kNN nor a probe is trivially perfect; the
    centres are fixed (seed 100), ``seed`` draws the samples, so splits share their classes."""
    centres = np.random.default_rng(100).normal(size=(classes, dim))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    features = centres[labels] + spread * rng.normal(size=(n, dim))
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels)


def test_uniform_knn_equals_scikit_learn_cosine_knn() -> None:
    train_x, train_y = _clusters(0, 400)
    test_x, _ = _clusters(1, 200)
    for k in (1, 5, 20):
        ours = knn_predict(train_x, train_y, test_x, 5, k=k, voting="uniform", chunk_size=64)
        reference = (
            KNeighborsClassifier(k, metric="cosine").fit(train_x.numpy(), train_y.numpy())
        ).predict(test_x.numpy())
        np.testing.assert_array_equal(ours.numpy(), reference)


def test_weighted_knn_on_a_hand_example() -> None:
    # Query (1, 0); neighbours: class 0 at cosine 0.6 (two of them), class 1 at cosine 1.0.
    train = torch.tensor([[0.6, 0.8], [0.6, -0.8], [1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    query = torch.tensor([[2.0, 0.0]])
    scores = knn_scores(train, labels, query, 3, k=3, temperature=1.0)
    votes = torch.tensor([2 * np.exp(0.6), np.exp(1.0), 0.0])
    torch.testing.assert_close(scores[0], (votes / votes.sum()).float())
    assert scores.argmax().item() == 0  # two weaker votes outweigh one: 2e^0.6 > e^1
    # A colder temperature lets the single closest neighbour win; uniform votes count heads.
    assert knn_predict(train, labels, query, 3, k=3, temperature=0.1).item() == 1
    uniform = knn_scores(train, labels, query, 3, k=3, voting="uniform")
    torch.testing.assert_close(uniform[0], torch.tensor([2 / 3, 1 / 3, 0.0]))


def test_linear_probe_matches_logistic_regression() -> None:
    train_x, train_y = _clusters(2, 600, classes=4, dim=32, spread=2.0)
    test_x, test_y = _clusters(3, 400, classes=4, dim=32, spread=2.0)
    probe = linear_probe(train_x, train_y, test_x, 4, epochs=60, seed=0)
    ours = float((probe.scores.argmax(1) == test_y).float().mean())
    reference = (LogisticRegression(max_iter=2000).fit(train_x.numpy(), train_y.numpy())).score(
        test_x.numpy(), test_y.numpy()
    )
    print(f"linear probe {ours:.3f} (lr {probe.chosen}), LogisticRegression {reference:.3f}")
    assert reference > 0.5  # the task is learnable, yet not trivial
    assert abs(ours - reference) <= 0.03
    assert set(probe.sweep) == {"0.001", "0.01", "0.1", "1.0", "10.0"}
    assert not probe.at_edge


def test_linear_svm_scores_like_another_linear_classifier() -> None:
    train_x, train_y = _clusters(2, 600, classes=4, dim=32, spread=2.0)
    test_x, test_y = _clusters(3, 400, classes=4, dim=32, spread=2.0)
    probe = svm_probe(train_x, train_y, test_x, 4, cs=[1e-3, 1e-2, 1e-1, 1.0], seed=0)
    ours = float((probe.scores.argmax(1) == test_y).float().mean())
    reference = (LogisticRegression(max_iter=2000).fit(train_x.numpy(), train_y.numpy())).score(
        test_x.numpy(), test_y.numpy()
    )
    assert abs(ours - reference) <= 0.04
    torch.testing.assert_close(probe.scores.sum(dim=1), torch.ones(400))
    assert set(probe.sweep) == {"0.001", "0.01", "0.1", "1.0"} and probe.chosen in (
        1e-3,
        1e-2,
        0.1,
        1.0,
    )


def test_linear_svm_separates_two_classes_and_gives_an_unseen_class_nothing() -> None:
    # class 0 left of x = 0, class 1 right of it, with a margin; class 2 never in training
    rng = np.random.default_rng(0)
    x = rng.uniform(1.0, 2.0, size=(120, 1)) * np.where(np.arange(120) % 2, 1.0, -1.0)[:, None]
    features = torch.tensor(np.hstack([x, rng.normal(size=(120, 1))]), dtype=torch.float32)
    labels = torch.tensor(np.arange(120) % 2)
    probe = svm_probe(features[:100], labels[:100], features[100:], 3, cs=[1.0], seed=0)
    assert probe.scores.shape == (20, 3) and probe.sweep == {}
    assert (probe.scores.argmax(1) == labels[100:]).all()
    assert (probe.scores[:, 2] == 0).all()


def test_stratified_split_keeps_every_class_on_both_sides() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 2)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(17))
    assert set(labels[val].tolist()) == {0, 1, 2} == set(labels[train].tolist())


def test_metrics_equal_scikit_learn() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=generator)
    logits = torch.randn(300, 4, generator=generator)
    logits[torch.arange(300), labels] += 1.0  # better than chance, far from perfect
    scores = logits.softmax(dim=1).double()
    scores = scores / scores.sum(dim=1, keepdim=True)
    ours = classification_metrics(scores, labels, 4)
    y, p = labels.numpy(), scores.numpy()
    predictions = p.argmax(1)
    expected = {
        "accuracy": accuracy_score(y, predictions),
        "balanced_accuracy": balanced_accuracy_score(y, predictions),
        "f1_macro": f1_score(y, predictions, average="macro"),
        "auroc_macro": roc_auc_score(y, p, multi_class="ovr", average="macro"),
    }
    assert set(ours) == set(expected)
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-5), name


TINY_ENCODER = ["encoder.depth=2", "encoder.embed_dim=64", "encoder.vit.num_heads=2"]
CPU = ["trainer.device=cpu", "trainer.num_workers=0"]


def _eval(tmp_path: Path, name: str, *words: str) -> dict:
    out = tmp_path / name
    result = fmcore("eval", *words, *CPU, f"run.dir={out}", cwd=tmp_path)
    assert "accuracy" in result.stdout
    return json.loads((out / "eval.json").read_text())


def test_fmcore_eval_random_encoder_writes_eval_json(tmp_path: Path) -> None:
    report = _eval(
        tmp_path,
        "knn",
        "checkpoint=random",
        "domain=digits",
        "eval=knn",
        "eval.bootstrap=200",
        *TINY_ENCODER,
    )
    assert report["protocol"] == "knn" and report["checkpoint"] == "random"
    assert report["splits"] == {"train": 1437, "val": 360}
    assert report["settings"]["k"] == 20 and report["settings"]["temperature"] == 0.07
    assert report["feature_dim"] == 64 and report["num_classes"] == 10
    assert set(report["metrics"]) == {"accuracy", "balanced_accuracy", "f1_macro", "auroc_macro"}
    assert 0.1 < report["metrics"]["accuracy"] <= 1.0
    assert set(report["ci95"]) == set(report["metrics"])
    for name, (low, high) in report["ci95"].items():
        assert low < report["metrics"][name] < high, name


@pytest.mark.slow
def test_fmcore_eval_linear_picks_an_lr_inside_its_sweep_on_digits(tmp_path: Path) -> None:
    report = _eval(
        tmp_path,
        "linear",
        "checkpoint=random",
        "domain=digits",
        "eval=linear",
        "eval.bootstrap=0",
        *TINY_ENCODER,
    )
    print(f"linear probe on digits: lr {report['chosen_lr']}, sweep {report['sweep_val_accuracy']}")
    assert report["settings"]["lrs"] == [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    assert report["chosen_lr"] in (1e-2, 1e-1, 1.0) and not report["chosen_lr_at_sweep_edge"]
    assert "ci95" not in report and report["metrics"]["accuracy"] > 0.5


def test_fmcore_eval_svm_on_raw_digits_reaches_what_the_pixels_allow(tmp_path: Path) -> None:
    report = _eval(
        tmp_path, "svm", "checkpoint=pixels", "domain=digits", "eval=svm", "eval.bootstrap=0"
    )
    assert report["protocol"] == "svm" and report["settings"]["cs"] == [0.001, 0.01, 0.1, 1.0]
    assert report["metrics"]["accuracy"] > 0.9  # linear models on raw digits: about 0.96
    assert "chosen_c" in report and "ci95" not in report


def test_fmcore_eval_needs_an_evaluation_and_a_checkpoint(tmp_path: Path) -> None:
    missing_eval = fmcore("eval", "checkpoint=random", cwd=tmp_path, check=False)
    assert missing_eval.returncode != 0 and "eval=knn" in missing_eval.stderr
    missing_file = fmcore(
        "eval", f"checkpoint={tmp_path}", "eval=knn", *CPU, cwd=tmp_path, check=False
    )
    assert missing_file.returncode == 2 and "checkpoint=random" in missing_file.stderr


def test_fmcore_eval_refuses_an_encoder_file_of_an_older_format(tmp_path: Path) -> None:
    """An encoder file from before a trunk's keys moved under ``encoder.<trunk>`` fails with
    both formats named, not with a missing key deep in the trunk's factory."""
    old = tmp_path / "encoder.safetensors"
    flat_encoder = "trunk: vit\nembed_dim: 64\ndepth: 2\nnum_heads: 2\n"
    metadata = {"format": "fmcore.encoder/1", "encoder": flat_encoder}
    save_file({"mask_token": torch.zeros(1, 1, 64)}, str(old), metadata=metadata)
    refused = fmcore("eval", f"checkpoint={old}", "eval=knn", *CPU, cwd=tmp_path, check=False)
    assert refused.returncode == 2
    assert "fmcore.encoder/1" in refused.stderr and "fmcore.encoder/2" in refused.stderr
