"""ABMIL: gated attention pooling by hand, patient-level splits, and slide labels learnt from
features that ``fmcore embed`` wrote for real slide files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fmcore
from safetensors.torch import load_file

from fmcore.config import compose, config_sources
from fmcore.errors import ConfigError
from fmcore.eval.feature_files import slide_files
from fmcore.eval.mil import (
    GatedAttention,
    SlideLabel,
    evaluate_mil,
    patient_split,
    split_by_column,
)
from fmcore.plugin_manager import load_registry


def test_gated_attention_on_a_hand_example() -> None:
    pool = GatedAttention(dim=2, hidden=1)
    with torch.no_grad():
        pool.tanh_branch.weight.copy_(torch.tensor([[1.0, 0.0]]))
        pool.tanh_branch.bias.zero_()
        pool.gate_branch.weight.copy_(torch.tensor([[0.0, 2.0]]))
        pool.gate_branch.bias.fill_(-1.0)
        pool.score.weight.fill_(3.0)
        pool.score.bias.fill_(0.5)
    bag = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    pooled, weights = pool(bag)
    # score_k = 3 * tanh(h_k0) * sigmoid(2 h_k1 - 1) + 0.5, softmax over the three tiles
    scores = torch.tensor(
        [3 * np.tanh(1.0) / (1 + np.exp(1.0)), 0.0, 3 * np.tanh(2.0) / (1 + np.exp(-1.0))]
    )
    expected = (scores + 0.5).softmax(dim=0).float()
    torch.testing.assert_close(weights, expected)
    assert weights.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(pooled, (expected[:, None] * bag).sum(dim=0))


def slides_of(patients: int, per_patient: int) -> list[SlideLabel]:
    return [
        SlideLabel(f"p{p}_s{s}", p % 2, f"p{p}", None)
        for p in range(patients)
        for s in range(per_patient)
    ]


def test_the_patient_split_never_separates_a_patients_slides() -> None:
    slides = slides_of(patients=20, per_patient=3)
    train, test = patient_split(slides, 0.3, seed=0)
    assert sorted(s.slide for s in train + test) == sorted(s.slide for s in slides)
    assert not {s.patient for s in train} & {s.patient for s in test}
    assert len({s.patient for s in test}) == 6 and {s.label for s in test} == {0, 1}
    assert patient_split(slides, 0.3, seed=0) == (train, test)
    assert patient_split(slides, 0.3, seed=1) != (train, test)


def test_a_split_column_may_not_put_one_patient_on_both_sides() -> None:
    slides = [SlideLabel("a", 0, "p1", "train"), SlideLabel("b", 1, "p1", "test")]
    with pytest.raises(ConfigError, match="p1"):
        split_by_column(slides, "train", "test")


GLASS = (243, 242, 245)
STROMA = (225, 150, 200)  # pink
TUMOUR = (95, 45, 140)  # dense purple nests
SLIDE_SIZE, TILE = 512, 64  # level-0 pixels at 0.5 mpp: an 8 x 8 grid of tiles


def synthetic_slide(rng: np.random.Generator, tumour: bool) -> tuple[np.ndarray, list]:
    """Glass around a textured pink section; tumour slides hold 3-5 purple tile-sized nests.
    Returns the image and the level-0 (x, y) of the nests' tiles."""
    image = np.empty((SLIDE_SIZE, SLIDE_SIZE, 3), np.float32)
    image[:] = GLASS
    inner = slice(TILE, SLIDE_SIZE - TILE)
    texture = rng.normal(0, 12, (SLIDE_SIZE, SLIDE_SIZE, 1))
    image[inner, inner] = (np.asarray(STROMA) + texture)[inner, inner]
    nests = []
    if tumour:
        cells = rng.choice(36, size=int(rng.integers(3, 6)), replace=False)
        for cell in cells:
            x, y = (1 + cell % 6) * TILE, (1 + cell // 6) * TILE
            image[y : y + TILE, x : x + TILE] = np.asarray(TUMOUR) + texture[y : y + TILE, :TILE]
            nests.append((x, y))
    return np.clip(image, 0, 255).astype(np.uint8), nests


@pytest.mark.slow
def test_abmil_learns_slide_labels_from_embedded_slides(tmp_path: Path, one_thread: None) -> None:
    pytest.importorskip("openslide", reason="needs the pathology extra")
    from fmcore.domains.pathology.sample_slide import pyramid, write_pyramidal_tiff

    rng = np.random.default_rng(7)
    slides_dir, rows, nests = tmp_path / "slides", [], {}
    slides_dir.mkdir()
    for number in range(40):  # 20 patients with two slides each, half of them with tumour
        patient, tumour = number // 2, (number // 2) % 2 == 1
        image, nests[f"slide_{number:02d}"] = synthetic_slide(rng, tumour)
        path = slides_dir / f"slide_{number:02d}.tif"
        write_pyramidal_tiff(path, pyramid(image), mpp=0.5, compression="zlib")
        rows.append((f"slide_{number:02d}", "tumour" if tumour else "normal", f"patient_{patient}"))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        csv.writer(handle).writerows([("slide", "label", "patient"), *rows])

    features = tmp_path / "features"
    fmcore(
        "embed",
        "checkpoint=random",
        "domain=pathology",
        f"data.root={slides_dir}",
        f"data.tile_size={TILE}",
        "data.mpp=0.5",
        f"run.cache_dir={tmp_path / 'cache'}",
        "encoder.depth=2",
        "encoder.embed_dim=64",
        "encoder.vit.num_heads=2",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        f"embed.out={features}",
        cwd=tmp_path,
    )
    files = slide_files(features)
    assert len(files) == 40

    # The random encoder keeps the signal: nest tiles lie far from the slide's stroma tiles.
    slide = next(name for name, found in nests.items() if found)
    tensors = load_file(str(files[slide]))
    is_nest = torch.tensor([tuple(xy) in nests[slide] for xy in tensors["coords"].tolist()])
    assert int(is_nest.sum()) == len(nests[slide])
    stroma = tensors["features"][~is_nest]
    centre, spread = stroma.mean(0), (stroma - stroma.mean(0)).norm(dim=1).max()
    assert (tensors["features"][is_nest] - centre).norm(dim=1).min() > spread

    registry = load_registry()
    words = [
        "eval=mil",
        f"eval.embeddings={features}",
        f"eval.labels={labels}",
        "eval.test_fraction=0.5",
        "eval.epochs=15",
        "eval.lr=1.0e-3",
        "eval.bootstrap=200",
        f"run.dir={tmp_path / 'mil'}",
    ]
    result = evaluate_mil(compose(words, config_sources(registry)), registry, words)
    print(f"ABMIL on {result['splits']} slides: {result['metrics']}")
    assert result["protocol"] == "mil" and result["checkpoint"] == "random"
    assert result["splits"] == {"train": 20, "test": 20}
    assert result["patients"] == {"train": 10, "test": 10}
    assert result["num_classes"] == 2 and result["feature_dim"] == 64
    assert result["metrics"]["accuracy"] >= 0.8
    assert result["metrics"]["auroc_macro"] >= 0.9
    low, high = result["ci95"]["accuracy"]
    assert low <= result["metrics"]["accuracy"] <= high
    assert Path(result["path"]).is_file()
