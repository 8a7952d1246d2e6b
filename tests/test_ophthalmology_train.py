"""`fmcore train domain=ophthalmology` end to end on the embedded samples, as a user runs it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import TINY_ENCODER, clean_run_summary, fmcore

pytest.importorskip("skimage", reason="needs the ophthalmology extra")

from PIL import Image

from fmcore.config import compose, config_sources
from fmcore.domains.ophthalmology.data import Ophthalmology
from fmcore.engine.trainer import train
from fmcore.plugin_manager import registry

# 32-px fundus samples with 8-px patches: 16 tokens, 12 of them inside the field of view.
SMALL_FUNDUS = [
    "domain=ophthalmology",
    "data.side=32",
    "encoder.tokenizer.patch_size=8",
    *TINY_ENCODER,
    "trainer.batch_size=4",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.max_steps=2",
]


@pytest.mark.slow
def test_mae_trains_on_the_embedded_photographs_of_every_format(tmp_path: Path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = fmcore(
        "train",
        *SMALL_FUNDUS,
        "trainer.num_workers=1",
        "method=mae",
        f"run.dir={run}",
        f"run.cache_dir={cache}",
        cwd=tmp_path,
    )
    assert "skipped bad input" not in result.stderr
    clean_run_summary(run)
    assert (run / "encoder.safetensors").exists()
    saved = (run / "config.yaml").read_text()
    assert "mask_ratio: 0.75" in saved and "flip: 0.0" in saved  # RETFound's ratio, no flips
    sample = sorted(p.suffix for p in (cache / "sample-data" / "ophthalmology").iterdir())
    assert sample == [".dcm", ".dcm", ".jpg", ".jpg", ".png", ".tif"]


@pytest.mark.parametrize("preset", ["dinov2_small", "simclr_small", "mae_small"])
def test_each_method_trains_a_step_on_fundus_photographs(
    tmp_path: Path, preset: str, one_thread: None
) -> None:
    run = tmp_path / "run"
    config = compose(
        [*SMALL_FUNDUS, f"method={preset}", f"run.dir={run}", f"run.cache_dir={tmp_path}"],
        config_sources(registry()),
    )
    train(config, registry())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0


def test_a_folder_with_bad_photographs_trains_and_names_them(tmp_path: Path) -> None:
    """A truncated JPEG is left out while indexing; an all-black photograph is found only when
    decoded, skipped and counted: both are named with their reason in the run's summary."""
    data = tmp_path / "data"
    data.mkdir()
    config = compose(
        [*SMALL_FUNDUS, f"run.cache_dir={tmp_path / 'cache'}"], config_sources(registry())
    )
    sample = Ophthalmology(config.data, tmp_path / "cache").resolve_root()
    for path in sample.iterdir():
        (data / path.name).write_bytes(path.read_bytes())
    whole = (sample / "patient_a_R.jpg").read_bytes()
    (data / "truncated.jpg").write_bytes(whole[:3000])
    Image.new("RGB", (120, 96)).save(data / "black.png")
    run = tmp_path / "run"
    result = fmcore(
        "train",
        *SMALL_FUNDUS,
        "method=mae_small",
        "trainer.max_steps=3",
        f"data.root={data}",
        f"run.dir={run}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["skipped_inputs"]) == 1
    assert "truncated.jpg: truncated JPEG" in summary["skipped_inputs"][0]
    assert summary["skipped_samples"] >= 1
    assert any("black.png: a black image" in m for m in summary["skipped_examples"])
    assert "truncated.jpg" in result.stderr


def test_the_labelled_sample_splits_by_patient_with_both_classes_everywhere(
    tmp_path: Path,
) -> None:
    config = compose(
        ["domain=ophthalmology", "data.sample=labelled", f"run.cache_dir={tmp_path}"],
        config_sources(registry()),
    )
    domain = Ophthalmology(config.data, tmp_path)
    patients = {}
    for split, photographs in (("train", 128), ("val", 64), ("test", 64)):
        refs = domain.index(split)
        assert len(refs) == photographs
        assert Counter(ref.label for ref in refs) == {0: photographs // 2, 1: photographs // 2}
        assert Counter(ref.eye for ref in refs) == {"L": photographs // 2, "R": photographs // 2}
        patients[split] = {ref.patient for ref in refs}
    assert patients["train"].isdisjoint(patients["val"] | patients["test"])
    assert domain.bad_inputs == []


def test_embed_writes_each_photographs_patient_and_eye(tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "features"
    words = ["domain=ophthalmology", "data.sample=labelled", "data.side=32"]
    fmcore(
        "embed",
        "checkpoint=random",
        *words,
        "encoder.tokenizer.patch_size=8",
        "encoder.depth=2",
        "encoder.embed_dim=32",
        "encoder.vit.num_heads=2",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "embed.split=val",
        f"embed.out={out}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    written = []
    for shard in sorted(out.glob("shard-*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            written += json.loads(handle.metadata()["sample_meta"])
    assert len(written) == 64
    assert Counter(meta["eye"] for meta in written) == {"L": 32, "R": 32}
    assert all(meta["image"] == f"{meta['patient']}_{meta['eye']}.jpg" for meta in written)
