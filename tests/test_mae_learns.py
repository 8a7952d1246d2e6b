"""MAE learns: a short pretraining on the real digits beats the same encoder at random init under
kNN on frozen features (mean-pooled patch tokens of the held-out split against the training one).

MAE features are known to need fine-tuning to shine, and mean pooling discards where strokes are,
so the absolute figures are modest; the gap is what this test is about.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sklearn.neighbors import KNeighborsClassifier

from fmcore.cli import config_sources
from fmcore.config import compose
from fmcore.encoder import Encoder
from fmcore.engine.trainer import train
from fmcore.factory import Parts, build_parts
from fmcore.plugin_manager import registry

PRETRAIN = [
    "domain=digits",
    "method=mae",
    "encoder.depth=2",
    "encoder.embed_dim=64",
    "encoder.num_heads=4",
    "method.decoder.embed_dim=64",
    "method.decoder.depth=1",
    "method.decoder.num_heads=4",
    "trainer.batch_size=64",
    "trainer.max_steps=300",
    "trainer.lr=1e-3",  # a short run wants a larger step than MAE's 1.5e-4 x 64 / 256
    "trainer.lr_scaling=null",
    "trainer.warmup_steps=20",
    "trainer.checkpoint_every=1000",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.progress=none",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def features(encoder: Encoder, parts: Parts, split: str) -> tuple[torch.Tensor, list[int]]:
    """Mean-pooled patch features (N, D) of a split, as evaluation sees it (no augmentation)."""
    samples = [parts.domain.load(ref) for ref in parts.domain.index(split)]
    data = parts.domain.normalize(torch.stack([s.data for s in samples]))
    return encoder.eval()(data).patches.mean(dim=1), [s.label for s in samples]


def knn_accuracy(encoder: Encoder, parts: Parts) -> float:
    train_x, train_y = features(encoder, parts, "train")
    val_x, val_y = features(encoder, parts, "val")
    classifier = KNeighborsClassifier(n_neighbors=5).fit(train_x.numpy(), train_y)
    return float(classifier.score(val_x.numpy(), val_y))


@pytest.mark.slow
def test_short_mae_pretraining_beats_a_random_encoder_under_knn(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = compose(
        [*PRETRAIN, f"run.dir={run}", f"run.cache_dir={tmp_path / 'cache'}"],
        config_sources(registry()),
    )
    torch.manual_seed(int(config.run.seed))  # the initial weights train() starts from
    parts = build_parts(config, registry())
    encoder = parts.method.encoder
    random_accuracy = knn_accuracy(encoder, parts)

    result = train(config, registry())
    encoder.load_state_dict(load_file(str(result.encoder_path)))
    mae_accuracy = knn_accuracy(encoder, parts)

    print(f"digits kNN (k=5): random init {random_accuracy:.3f}, MAE {mae_accuracy:.3f}")
    assert result.last_metrics["loss"] < 0.8  # from ~3 at init (unit-variance targets)
    assert mae_accuracy > random_accuracy + 0.15
    assert (run / "reconstructions" / "step_00000300.png").is_file()
