"""`fmcore train domain=robotics` end to end on the embedded sample, as a user runs it: the
LeRobot v3 dataset and the same episodes as robomimic HDF5, frames and clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_ENCODER, clean_run_summary, fmcore

pytest.importorskip("h5py", reason="needs the robotics extra: pip install -e '.[robotics]'")

from fmcore.config import compose, config_sources
from fmcore.engine.trainer import train
from fmcore.plugin_manager import registry

QUICK = [
    "domain=robotics",
    *TINY_ENCODER,
    "trainer.batch_size=8",
    "trainer.device=cpu",
    "trainer.max_steps=2",
]


@pytest.mark.slow
def test_mae_trains_on_the_lerobot_sample_from_the_command_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fmcore(
        "train",
        *QUICK,
        "method=mae",
        "trainer.num_workers=1",
        f"run.dir={run}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    summary = clean_run_summary(run)
    assert summary["steps"] == 2 and (run / "encoder.safetensors").exists()
    sample = tmp_path / "cache/sample-data/robotics"
    assert (sample / "lerobot/meta/info.json").exists() and (sample / "robomimic.hdf5").exists()


@pytest.mark.parametrize(
    "layout",
    [
        ["data.format=hdf5"],
        ["data.frames=4", "data.stride=2", "data.camera_mode=stack", "data.cameras=[top,wrist]"],
    ],
    ids=["hdf5-frames", "lerobot-stacked-clips"],
)
def test_mae_trains_a_step_on_hdf5_frames_and_on_stacked_clips(
    tmp_path: Path, layout: list[str], one_thread: None
) -> None:
    run = tmp_path / "run"
    config = compose(
        [
            *QUICK,
            *layout,
            "method=mae",
            "trainer.num_workers=0",
            f"run.dir={run}",
            f"run.cache_dir={tmp_path}",
        ],
        config_sources(registry()),
    )
    train(config, registry())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0


@pytest.mark.slow
def test_behaviour_cloning_on_a_random_encoder_is_scored_on_test_episodes_and_in_closed_loop(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bc"
    fmcore(
        "eval",
        "eval=bc",
        "checkpoint=random",
        "domain=robotics",
        "data.frame_step=4",
        *TINY_ENCODER,
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "eval.epochs=20",
        "eval.rollouts=8",
        f"run.dir={out}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    report = json.loads((out / "eval.json").read_text())
    # 160 episodes of 24 frames, a sample every 4th frame: 6 time steps each, split by episode
    assert sum(report["splits"].values()) == 160 * 6
    assert all(count % 6 == 0 for count in report["splits"].values())
    assert report["feature_dim"] == 2 * 64  # the top and wrist cameras' features joined
    assert report["closed_loop_episodes"] == 8
    metrics = report["metrics"]
    for prefix in ("", "state_only_"):
        assert 0 <= metrics[prefix + "success_rate"] <= 1
        assert metrics[prefix + "action_mse"] > 0 and metrics[prefix + "action_r2"] <= 1
