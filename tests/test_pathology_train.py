"""`fmcore train domain=pathology` end to end, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_RUN, fmcore

pytest.importorskip("openslide", reason="needs the pathology extra: pip install -e '.[pathology]'")

from fmcore.config import compose, config_sources
from fmcore.domains.pathology.sample_slide import (
    pyramid,
    synthetic_section,
    write_pyramidal_tiff,
)
from fmcore.engine.trainer import train
from fmcore.errors import NoUsableSamples
from fmcore.plugin_manager import registry

# SMALL_RUN on pathology: 64-px tiles cut into 8-px patches (64 tokens).
PATHOLOGY_RUN = [
    *(word for word in SMALL_RUN if not word.startswith("domain=")),
    "domain=pathology",
    "data.tile_size=64",
    "encoder.tokenizer.patch_size=8",
    "trainer.batch_size=8",
]


def corrupt_level(slide: Path, page: int) -> None:
    """Overwrite every stored tile of one pyramid page with noise."""
    import tifffile

    with tifffile.TiffFile(slide) as tif:
        segments = list(
            zip(tif.pages[page].dataoffsets, tif.pages[page].databytecounts, strict=True)
        )
    rng = np.random.default_rng(0)
    with open(slide, "r+b") as handle:
        for offset, count in segments:
            handle.seek(offset + 8)
            handle.write(rng.integers(0, 256, count - 16, dtype=np.uint8).tobytes())


def good_and_bad_slides(folder: Path) -> dict[str, Path]:
    """Two good synthetic H&E slides at 0.5 mpp, and bad inputs of every kind."""
    folder.mkdir()
    slides = {}
    for number in range(2):
        image = synthetic_section(np.random.default_rng(number), 512)
        slides[f"good_{number}"] = folder / f"good_{number}.tif"
        write_pyramidal_tiff(slides[f"good_{number}"], pyramid(image), 0.5, compression="zlib")
    # Tissue is found on its intact thumbnail levels, but every full-resolution tile is corrupt.
    slides["corrupt_tiles"] = folder / "corrupt_tiles.tif"
    image = synthetic_section(np.random.default_rng(7), 512)
    write_pyramidal_tiff(slides["corrupt_tiles"], pyramid(image), 0.5, compression="zlib")
    corrupt_level(slides["corrupt_tiles"], page=0)
    slides["truncated"] = folder / "truncated.svs"
    data = slides["good_0"].read_bytes()
    slides["truncated"].write_bytes(data[: len(data) // 3])
    slides["not_a_slide"] = folder / "readme.ndpi"
    slides["not_a_slide"].write_text("this is not a slide")
    slides["no_mpp"] = folder / "no_mpp.tif"
    write_pyramidal_tiff(slides["no_mpp"], pyramid(image), None, compression="zlib")
    slides["blank"] = folder / "blank.tif"
    write_pyramidal_tiff(slides["blank"], pyramid(np.full((512, 512, 3), 244, np.uint8)), 0.5)
    return slides


@pytest.fixture
def sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, shared with test_pathology_domain: the sample is written once
    (atomically, so sharing is safe) and its tile index is reused."""
    return tmp_path_factory.getbasetemp() / "pathology-sample-cache"


@pytest.mark.slow
def test_train_runs_on_the_embedded_sample(tmp_path: Path, sample_cache: Path) -> None:
    pytest.importorskip("imagecodecs", reason="the embedded sample is JPEG-compressed")
    run = tmp_path / "run"
    result = fmcore(
        "train",
        *PATHOLOGY_RUN,
        "method=simclr",
        "trainer.max_steps=3",
        "trainer.num_workers=1",  # tiles are read in a worker process, with its own handles
        f"run.dir={run}",
        f"run.cache_dir={sample_cache}",
        cwd=tmp_path,
    )
    assert "finished 3 steps" in result.stdout
    assert "from 2 of 2 slide(s)" in result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["skipped_samples"] == 0
    assert summary["skipped_inputs"] == []
    assert (run / "encoder.safetensors").exists()
    assert list((sample_cache / "sample-data" / "pathology").glob("*.tif"))


@pytest.mark.slow
def test_train_over_good_and_bad_slides_finishes_and_reports_the_bad_ones(tmp_path: Path) -> None:
    slides = good_and_bad_slides(tmp_path / "slides")
    run = tmp_path / "run"
    result = fmcore(
        "train",
        *PATHOLOGY_RUN,
        "method=simclr",
        "trainer.max_steps=2",
        f"data.root={tmp_path / 'slides'}",
        f"run.dir={run}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert "finished 2 steps" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    bad = ("truncated", "not_a_slide", "no_mpp", "blank")
    assert sorted(m.split(": ")[0] for m in summary["skipped_inputs"]) == sorted(
        str(slides[k]) for k in bad
    )
    for kind in bad:
        assert f"skipped bad input: {slides[kind]}: " in result.stderr
    # The corrupt slide's tiles fail one by one: skipped, counted and named with coordinates.
    assert summary["skipped_samples"] >= 1
    assert all(
        f"{slides['corrupt_tiles']}: cannot read tile at level-0" in message
        for message in summary["skipped_examples"]
    )


def test_a_run_without_any_usable_slide_fails_naming_each_one(tmp_path: Path) -> None:
    slides = good_and_bad_slides(tmp_path / "slides")
    for kind in ("good_0", "good_1", "corrupt_tiles"):
        slides[kind].unlink()
    config = compose(
        [
            *PATHOLOGY_RUN,
            "trainer.max_steps=2",
            f"data.root={tmp_path / 'slides'}",
            f"run.dir={tmp_path / 'run'}",
            f"run.cache_dir={tmp_path / 'cache'}",
        ],
        config_sources(registry()),
    )
    with pytest.raises(NoUsableSamples) as failure:
        train(config, registry())
    message = str(failure.value)
    assert message.startswith("domain 'pathology' found no usable samples")
    for kind in ("truncated", "not_a_slide", "no_mpp", "blank"):
        assert str(slides[kind]) in message
    assert "data.slide_mpp" in message and "no tissue" in message


@pytest.mark.slow
def test_the_main_command_trains_dinov2_on_the_embedded_slides(tmp_path: Path) -> None:
    """`fmcore train domain=pathology method=dinov2` with the reference recipe and the default
    encoder (vit_tiny, 224-px tiles, 2 global + 8 local crops), shortened to two small steps."""
    run = tmp_path / "run"
    result = fmcore(
        "train",
        "domain=pathology",
        "method=dinov2",
        "trainer.max_steps=2",
        "trainer.batch_size=4",
        "trainer.num_workers=0",
        f"run.dir={run}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
        timeout=600,
    )
    assert "finished 2 steps" in result.stdout
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2
    assert metrics[-1]["dino_loss"] > 0 and metrics[-1]["masked_fraction"] > 0
    assert (run / "encoder.safetensors").exists()


@pytest.mark.slow
def test_mae_trains_on_the_embedded_slides(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fmcore(
        "train",
        "domain=pathology",
        "method=mae",
        "data.tile_size=64",
        "encoder.tokenizer.patch_size=8",
        "encoder.depth=2",
        "encoder.embed_dim=64",
        "encoder.vit.num_heads=2",
        "method.decoder.depth=1",
        "method.decoder.embed_dim=64",
        "method.decoder.num_heads=2",
        "trainer.batch_size=4",
        "trainer.max_steps=3",
        "trainer.num_workers=0",
        f"run.dir={run}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 3 and metrics[-1]["loss"] > 0
    assert list((run / "reconstructions").glob("step_*.png"))
