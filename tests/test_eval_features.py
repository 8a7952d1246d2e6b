"""Which features are evaluated: cls, mean or cls+mean per method, and the raw-pixel baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fmcore
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier

from fmcore.backbones.vit import VisionTransformer, ViTConfig
from fmcore.encoder import Encoder
from fmcore.modalities.grid import GridTokenizer

CPU = ["trainer.device=cpu", "trainer.num_workers=0", "eval.bootstrap=0"]
TINY = ["encoder.depth=2", "encoder.embed_dim=64", "encoder.vit.num_heads=2"]


def _eval(tmp_path: Path, name: str, *words: str, check: bool = True):
    out = tmp_path / name
    done = fmcore(
        "eval", "domain=digits", *words, *CPU, f"run.dir={out}", cwd=tmp_path, check=check
    )
    return json.loads((out / "eval.json").read_text()) if check else done


def test_feature_kinds_pool_the_encoder_output() -> None:
    torch.manual_seed(0)
    trunk = VisionTransformer(ViTConfig(embed_dim=32, depth=1, num_heads=2))
    encoder = Encoder(GridTokenizer(32, 1, (4, 4), (8, 8)), trunk).eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        out = encoder(x)
    patches = out.patches  # (3, 4, 32): four 4x4 patches
    by_hand_mean = (patches[:, 0] + patches[:, 1] + patches[:, 2] + patches[:, 3]) / 4
    torch.testing.assert_close(encoder.features(x, "cls"), out.cls)
    torch.testing.assert_close(encoder.features(x, "mean"), by_hand_mean)
    both = encoder.features(x, "cls+mean")
    assert both.shape == (3, 64)
    torch.testing.assert_close(both[:, :32], out.cls)
    torch.testing.assert_close(both[:, 32:], by_hand_mean)
    with pytest.raises(ValueError, match="cls, mean, cls\\+mean"):
        encoder.features(x, "max")


def test_mean_features_cover_only_the_patches_that_hold_data() -> None:
    """A valid mask over the left half of an 8x8 image (two of four 4x4 patches hold data):
    the mean is over patches 0 and 2 only; the class token does not change."""
    torch.manual_seed(0)
    trunk = VisionTransformer(ViTConfig(embed_dim=32, depth=1, num_heads=2))
    encoder = Encoder(GridTokenizer(32, 1, (4, 4), (8, 8)), trunk).eval()
    x = torch.rand(3, 1, 8, 8)
    valid = torch.zeros(3, 1, 8, 8)
    valid[..., :4] = 1
    with torch.no_grad():
        patches = encoder(x).patches
    by_hand = (patches[:, 0] + patches[:, 2]) / 2
    torch.testing.assert_close(encoder.features(x, "mean", valid), by_hand)
    torch.testing.assert_close(encoder.features(x, "cls+mean", valid)[:, 32:], by_hand)
    torch.testing.assert_close(encoder.features(x, "cls", valid), encoder.features(x, "cls"))


def test_raw_pixel_baseline_equals_scikit_learn_on_the_digits(tmp_path: Path) -> None:
    result = _eval(
        tmp_path, "pixels", "checkpoint=pixels", "eval=knn", "eval.voting=uniform", "eval.k=5"
    )
    # The same split and input, built here from scikit-learn's arrays: every 5th digit held
    # out, 8x8 upsampled to 16x16 (bilinear), normalised with the domain's mean 0.3 / std 0.4.
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    pixels = ((images.clamp(0, 1) - 0.3) / 0.4).flatten(1).numpy()
    held_out = np.arange(len(pixels)) % 5 == 0
    reference = KNeighborsClassifier(5, metric="cosine").fit(
        pixels[~held_out], digits.target[~held_out]
    )
    expected = reference.score(pixels[held_out], digits.target[held_out])
    assert result["checkpoint"] == "pixels" and result["features"] == "pixels"
    assert result["encoder"] is None and result["feature_dim"] == 256
    assert result["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-6)  # float32 metric
    assert result["metrics"]["accuracy"] > 0.9  # what every encoder has to be measured against


@pytest.mark.usefixtures("one_thread")
def test_each_checkpoint_is_scored_on_its_methods_features(tmp_path: Path) -> None:
    run = tmp_path / "mae"
    fmcore(
        "train",
        "domain=digits",
        "method=mae",
        *TINY,
        "method.decoder.embed_dim=32",
        "method.decoder.depth=1",
        "method.decoder.num_heads=2",
        "trainer.max_steps=2",
        "trainer.batch_size=8",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        f"run.dir={run}",
        cwd=tmp_path,
    )
    mae_default = _eval(tmp_path, "default", f"checkpoint={run}", "eval=knn")
    assert mae_default["features"] == "mean" and mae_default["feature_dim"] == 64
    chosen = _eval(tmp_path, "chosen", f"checkpoint={run}", "eval=linear", "eval.features=cls+mean")
    assert chosen["features"] == "cls+mean" and chosen["feature_dim"] == 128
    # A random encoder follows the method it stands in for; with no method it is simclr's cls.
    random_mae = _eval(tmp_path, "random-mae", "checkpoint=random", "method=mae", "eval=knn", *TINY)
    assert random_mae["features"] == "mean"
    random_default = _eval(tmp_path, "random", "checkpoint=random", "eval=knn", *TINY)
    assert random_default["features"] == "cls"
    wrong = _eval(
        tmp_path, "wrong", f"checkpoint={run}", "eval=knn", "eval.features=max", check=False
    )
    assert wrong.returncode == 2 and "eval.features=max" in wrong.stderr
