"""Periodic kNN evaluation during training (issue 7): what it logs, that its numbers are the
final encoder's, and that it leaves the weights trained exactly as without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_RUN
from omegaconf import DictConfig, OmegaConf, open_dict
from safetensors.torch import load_file
from sklearn.neighbors import KNeighborsClassifier

from fmcore.config import compose, config_sources
from fmcore.domain import Domain, Sample
from fmcore.domains.digits.data import Digits
from fmcore.encoder import Encoder
from fmcore.engine.progress import MetricsLog
from fmcore.engine.trainer import train
from fmcore.errors import ConfigError
from fmcore.eval.loading import load_encoder
from fmcore.eval.periodic import periodic_evaluation
from fmcore.factory import build_encoder
from fmcore.plugin_manager import Registry, load_registry

RUN = [
    "trainer.max_steps=5",
    "trainer.log_every=2",
    "trainer.checkpoint_every=5",
    "trainer.progress=none",
]
CHECKPOINT = "checkpoints/step_00000005"
KNN_EVERY_2 = ["eval=knn", "eval.every_steps=2", "eval.voting=uniform", "eval.k=5"]
METRIC_KEYS = {
    "step",
    "eval/knn_accuracy",
    "eval/knn_balanced_accuracy",
    "eval/knn_f1_macro",
    "eval/knn_auroc_macro",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def _config(registry: Registry, *words: str) -> DictConfig:
    return compose([*SMALL_RUN, *words], config_sources(registry))


def _digits(config, tmp_path: Path) -> Digits:
    return Digits(config.data, tmp_path)


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _split_features(encoder: Encoder, domain: Domain, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Class-token features of a whole split in one batch, written out here on purpose."""
    samples = [domain.load(ref) for ref in domain.index(split)]
    sixteenths = torch.stack([sample.data for sample in samples])  # int16, of counts 0-16
    images = domain.normalize(sixteenths.float() / 256)
    with torch.no_grad():
        features = encoder.eval()(images).cls
    return features.numpy(), np.array([sample.label for sample in samples])


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_periodic_knn_is_the_final_encoders_and_changes_no_weight(
    registry: Registry, tmp_path: Path
) -> None:
    # Both runs in this process, as `fmcore train` runs them, without two interpreter start-ups.
    evaluated, plain = tmp_path / "evaluated", tmp_path / "plain"
    config = _config(registry, *RUN, *KNN_EVERY_2, f"run.dir={evaluated}")
    train(config, registry, evaluation=periodic_evaluation)
    train(_config(registry, *RUN, f"run.dir={plain}"), registry)

    lines = _lines(evaluated)
    evaluations = [line for line in lines if "eval/knn_accuracy" in line]
    assert [line["step"] for line in evaluations] == [2, 4, 5]  # every 2 steps and the last
    assert all(set(line) == METRIC_KEYS for line in evaluations)
    assert all(0.0 < line["eval/knn_accuracy"] <= 1.0 for line in evaluations)

    # Same weights, optimizer state and losses as the run that never evaluated.
    for file in (
        "encoder.safetensors",
        *(f"{CHECKPOINT}/{name}.safetensors" for name in ("model", "optimizer")),
    ):
        a, b = load_file(str(evaluated / file)), load_file(str(plain / file))
        assert a.keys() == b.keys()
        assert all(a[key].equal(b[key]) for key in a), file
    training = [line["loss"] for line in lines if "loss" in line]
    assert training == [line["loss"] for line in _lines(plain)]

    # The last line scores the saved final encoder: scikit-learn's cosine kNN (uniform votes)
    # on features computed here agrees.
    config = OmegaConf.load(evaluated / "config.yaml")
    with open_dict(config):
        config.checkpoint = str(evaluated)
    loaded = load_encoder(config, registry)
    train_x, train_y = _split_features(loaded.encoder, loaded.domain, "train")
    val_x, val_y = _split_features(loaded.encoder, loaded.domain, "val")
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(train_x, train_y)
    expected = float((knn.predict(val_x) == val_y).mean())
    logged = evaluations[-1]["eval/knn_accuracy"]
    print(f"periodic kNN accuracy {logged:.6f}, scikit-learn on the final encoder {expected:.6f}")
    # Features batched differently may differ in the last bits: one near-tied query may flip.
    assert logged == pytest.approx(expected, abs=1.5 / len(val_y))


@pytest.mark.usefixtures("one_thread")
def test_evaluating_restores_rng_train_mode_and_token_count(
    registry: Registry, tmp_path: Path
) -> None:
    config = _config(registry, "eval=knn", "eval.every_steps=3")
    domain = _digits(config, tmp_path)
    messages: list[str] = []
    evaluation = periodic_evaluation(config, domain, torch.device("cpu"), messages.append)
    encoder = build_encoder(config, registry, domain).train()
    encoder.tokens_processed = 7
    rng = torch.get_rng_state()

    log = MetricsLog(tmp_path / "metrics.jsonl", resume_step=None)
    assert evaluation is not None and evaluation.due(3, 10) and not evaluation.due(4, 10)
    assert evaluation.due(10, 10)  # the last step, though not a multiple of 3
    evaluation.run(encoder, 3, log)

    assert torch.equal(torch.get_rng_state(), rng)
    assert encoder.training and all(module.training for module in encoder.modules())
    assert encoder.tokens_processed == 7
    (line,) = _lines(tmp_path)
    assert set(line) == METRIC_KEYS and line["step"] == 3
    assert messages == [f"step 3: kNN accuracy {line['eval/knn_accuracy']:.4f} on val of digits"]


class UnlabelledDigits(Digits):
    """The digits without their labels, as an unlabelled image folder would be."""

    def load(self, ref: int) -> Sample:
        sample = super().load(ref)
        return Sample(sample.data, -1, sample.meta)


def test_off_by_default_and_clear_errors_for_what_cannot_be_evaluated(
    registry: Registry, tmp_path: Path
) -> None:
    cpu = torch.device("cpu")
    config = _config(registry)
    assert config.eval.every_steps == 0
    assert periodic_evaluation(config, _digits(config, tmp_path), cpu, print) is None

    def error(*words: str, domain_class: type[Digits] = Digits) -> str:
        config = _config(registry, *words)
        with pytest.raises(ConfigError) as raised:
            periodic_evaluation(config, domain_class(config.data, tmp_path), cpu, print)
        return str(raised.value)

    assert "add eval=knn" in error("eval.every_steps=5")
    assert "runs kNN only, not eval=linear" in error("eval=linear", "eval.every_steps=5")
    with pytest.raises(ConfigError, match=r"eval\.every_steps must be 0 or more, not -1"):
        _config(registry, "eval.every_steps=-1")  # refused when the config is composed
    with pytest.raises(ConfigError, match=r"eval\.every_steps: Value 'often'"):
        _config(registry, "eval.every_steps=often")
    with pytest.raises(ConfigError, match=r"eval\.voting must be one of weighted, uniform"):
        _config(registry, "eval=knn", "eval.every_steps=5", "eval.voting=most")
    missing = error("eval=knn", "eval.every_steps=5", "eval.test_split=test")
    assert "eval.every_steps=5" in missing and "unknown split 'test'" in missing
    unlabelled = error("eval=knn", "eval.every_steps=5", domain_class=UnlabelledDigits)
    assert "split 'train' of domain 'digits' has no labels" in unlabelled


def test_train_refuses_periodic_evaluation_it_was_not_given(registry: Registry) -> None:
    """The engine does not import evaluation: a caller of train() that asks for it in config
    without passing the factory is told, instead of training silently unevaluated."""
    config = _config(registry, "eval=knn", "eval.every_steps=2")
    with pytest.raises(ConfigError, match=r"evaluation=fmcore\.eval\.periodic\."):
        train(config, registry)
