"""`fmcore train domain=points` end to end on the embedded samples, as a user runs it, and the
linear SVM the point-cloud papers report, on its labelled sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_ENCODER, fmcore

pytest.importorskip("open3d", reason="needs the pointcloud extra: pip install -e '.[pointcloud]'")

from fmcore.config import compose, config_sources
from fmcore.domains.points.data import PointClouds
from fmcore.engine.trainer import train
from fmcore.plugin_manager import registry

# 256 points in 16 groups of 16: 16 tokens, as the other domains' quick tests.
SMALL_CLOUDS = [
    "domain=points",
    "data.points=256",
    "data.mesh_points=1024",
    "encoder.tokenizer.num_groups=16",
    "encoder.tokenizer.group_size=16",
    *TINY_ENCODER,
    "trainer.batch_size=4",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.max_steps=2",
]


@pytest.mark.slow
def test_mae_trains_on_clouds_and_meshes_of_every_format_and_names_a_bad_file(
    tmp_path: Path,
) -> None:
    """Every file of the plain embedded sample, and a cut PLY file left out while indexing
    with its name and reason in the run's output and summary."""
    data, cache, run = tmp_path / "data", tmp_path / "cache", tmp_path / "run"
    data.mkdir()
    config = compose([*SMALL_CLOUDS, f"run.cache_dir={cache}"], config_sources(registry()))
    sample = PointClouds(config.data, cache).resolve_root()
    for path in sample.iterdir():
        (data / path.name).write_bytes(path.read_bytes())
    whole = (sample / "0_colour_normals_binary.ply").read_bytes()
    (data / "cut.ply").write_bytes(whole[: len(whole) // 3])
    result = fmcore(
        "train",
        *SMALL_CLOUDS,
        "trainer.num_workers=1",
        "method=mae",
        f"data.root={data}",
        f"run.dir={run}",
        f"run.cache_dir={cache}",
        cwd=tmp_path,
    )
    summary = json.loads((run / "summary.json").read_text())
    (skipped,) = summary["skipped_inputs"]
    assert "cut.ply: truncated PLY" in skipped and "cut.ply" in result.stderr
    assert summary["skipped_samples"] == 0
    assert (run / "encoder.safetensors").exists()
    saved = (run / "config.yaml").read_text()
    assert "mask_ratio: 0.6" in saved  # Point-MAE's recipe, from method.by_modality.points
    assert "depth: 4" in saved and "flip: 0.0" in saved


@pytest.mark.parametrize("preset", ["dinov2_small", "simclr_small", "mae_small"])
def test_each_method_trains_a_step_on_point_clouds(
    tmp_path: Path, preset: str, one_thread: None
) -> None:
    run = tmp_path / "run"
    config = compose(
        [*SMALL_CLOUDS, f"method={preset}", f"run.dir={run}", f"run.cache_dir={tmp_path}"],
        config_sources(registry()),
    )
    train(config, registry())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0


@pytest.mark.slow
def test_a_linear_svm_scores_a_random_encoder_on_the_labelled_shapes(tmp_path: Path) -> None:
    fmcore(
        "eval",
        "checkpoint=random",
        "eval=svm",
        "domain=points",
        "data.sample=labelled",
        "data.points=256",
        "encoder.tokenizer.num_groups=16",
        "encoder.tokenizer.group_size=16",
        *TINY_ENCODER,
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "eval.bootstrap=0",
        f"run.dir={tmp_path / 'svm'}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / "svm" / "eval.json").read_text())
    assert report["splits"] == {"train": 288, "val": 144} and report["num_classes"] == 12
    # twelve objects: a random encoder's geometry already tells many apart (chance: 1/12)
    assert report["metrics"]["balanced_accuracy"] > 0.3
