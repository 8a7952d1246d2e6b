"""Every method's small preset learns on the real digits: after a short pretraining through
``fmcore train``, ``fmcore eval``'s kNN on the method's own features beats the random encoder
the preset starts from (same architecture, same init) by a wide margin, and the same features
with shuffled training labels fall to chance, so the gain is the content and not the protocol.

The encoder is shrunk (2 blocks of 64) so CI can afford three runs; bench/learns.py holds the
full targets on vit_tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import fmcore

from fmcore.config import compose, config_sources
from fmcore.eval.features import extract_features
from fmcore.eval.knn import knn_predict
from fmcore.eval.loading import load_encoder
from fmcore.plugin_manager import registry

SMALL_ENCODER = ["encoder.depth=2", "encoder.embed_dim=64", "encoder.vit.num_heads=2"]
CPU = ["trainer.device=cpu", "trainer.num_workers=0"]
PRESETS = {  # preset -> (extra words for the small encoder, steps, margin over random)
    "simclr_small": (["method.hidden_dim=128", "method.projection_dim=64"], 200, 0.15),
    "mae_small": (
        ["method.decoder.embed_dim=64", "method.decoder.depth=1", "method.decoder.num_heads=2"],
        800,
        0.15,
    ),
    "dinov2_small": ([], 300, 0.1),
    # 400 steps: 0.556 (AIM) and 0.669 (ARM) against 0.361 for the random encoder
    "aim_small": (["method.head.width=64", "method.head.depth=1"], 400, 0.08),
    "arm_small": (["method.head.width=64", "method.head.depth=1"], 400, 0.15),
    # 400 steps: 0.503 (D-iGPT, its EMA teacher) and 0.489 (I-JEPA) against 0.361 (their
    # presets' YAML, ablations)
    "digpt_small": (["method.head.width=64", "method.head.depth=1"], 400, 0.07),
    "ijepa_small": (["method.predictor.embed_dim=64", "method.predictor.num_heads=2"], 400, 0.06),
}


def knn_eval(tmp_path: Path, name: str, *words: str) -> dict:
    out = tmp_path / name
    fmcore(
        "eval",
        "domain=digits",
        "eval=knn",
        "eval.bootstrap=0",
        *words,
        *CPU,
        f"run.dir={out}",
        cwd=tmp_path,
    )
    return json.loads((out / "eval.json").read_text())


def shuffled_label_accuracy(run: Path) -> float:
    """kNN of the trained features when the training labels are permuted."""
    words = ["domain=digits", "eval=knn", f"checkpoint={run}", *CPU]
    config = compose(words, config_sources(registry()))
    loaded = load_encoder(config, registry(), words)
    kind = loaded.feature_kind(None, "eval.features")
    train = extract_features(loaded.encoder, loaded.domain, "train", l2_normalize=True, kind=kind)
    val = extract_features(loaded.encoder, loaded.domain, "val", l2_normalize=True, kind=kind)
    permuted = train.labels[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
    predicted = knn_predict(train.features, permuted, val.features, 10, k=20)
    return float((predicted == val.labels).float().mean())


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("preset", list(PRESETS))
def test_small_preset_beats_its_random_encoder_on_digits(tmp_path: Path, preset: str) -> None:
    extra, steps, margin = PRESETS[preset]
    run = tmp_path / "run"
    fmcore(
        "train",
        "domain=digits",
        f"method={preset}",
        *SMALL_ENCODER,
        *extra,
        *CPU,
        f"trainer.max_steps={steps}",
        "trainer.checkpoint_every=100000",
        f"run.dir={run}",
        cwd=tmp_path,
        timeout=900,
    )
    trained = knn_eval(tmp_path, "trained", f"checkpoint={run}")
    random = knn_eval(tmp_path, "random", "checkpoint=random", f"method={preset}", *SMALL_ENCODER)
    assert trained["encoder"] == random["encoder"] and trained["features"] == random["features"]
    trained_accuracy = trained["metrics"]["accuracy"]
    random_accuracy = random["metrics"]["accuracy"]
    shuffled = shuffled_label_accuracy(run)
    print(
        f"{preset} kNN on digits ({trained['features']}): random {random_accuracy:.3f},"
        f" trained {trained_accuracy:.3f}, shuffled labels {shuffled:.3f}"
    )
    assert trained_accuracy > random_accuracy + margin
    assert shuffled < 0.2  # ten classes: chance is 0.1
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["collapse/feature_std"] > 0.1
