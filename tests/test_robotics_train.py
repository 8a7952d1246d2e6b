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


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module's runs: the embedded sample is written (and its videos
    probed) once."""
    return tmp_path_factory.mktemp("robotics-cache")


QUICK = [
    "domain=robotics",
    *TINY_ENCODER,
    "trainer.batch_size=8",
    "trainer.device=cpu",
    "trainer.max_steps=2",
]


@pytest.mark.slow
def test_mae_trains_on_the_lerobot_sample_from_the_command_line(
    tmp_path: Path, cache: Path
) -> None:
    run = tmp_path / "run"
    fmcore(
        "train",
        *QUICK,
        "method=mae",
        "trainer.num_workers=1",
        f"run.dir={run}",
        f"run.cache_dir={cache}",
        cwd=tmp_path,
    )
    summary = clean_run_summary(run)
    assert summary["steps"] == 2 and (run / "encoder.safetensors").exists()
    sample = cache / "sample-data/robotics-v2"
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
    tmp_path: Path, cache: Path, layout: list[str], one_thread: None
) -> None:
    run = tmp_path / "run"
    config = compose(
        [
            *QUICK,
            *layout,
            "method=mae",
            "trainer.num_workers=0",
            f"run.dir={run}",
            f"run.cache_dir={cache}",
        ],
        config_sources(registry()),
    )
    train(config, registry())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0


@pytest.mark.slow
def test_behaviour_cloning_on_pixels_reaches_targets_a_state_only_policy_cannot_see(
    tmp_path: Path, cache: Path
) -> None:
    """The raw pixels show where the target is and the state does not: fit on the train
    episodes, the pixel policy predicts the expert's actions on test episodes and reaches new
    targets in closed loop; the state-only baseline does neither."""
    out = tmp_path / "bc"
    fmcore(
        "eval",
        "eval=bc",
        "checkpoint=pixels",
        "domain=robotics",
        "data.frame_step=4",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "eval.epochs=20",
        "eval.rollouts=10",
        f"run.dir={out}",
        f"run.cache_dir={cache}",
        cwd=tmp_path,
    )
    report = json.loads((out / "eval.json").read_text())
    # 160 episodes of 24 frames, a sample every 4th frame: 6 time steps each, split by episode
    assert sum(report["splits"].values()) == 160 * 6
    assert all(count % 6 == 0 for count in report["splits"].values())
    assert report["feature_dim"] == 2 * 3 * 64 * 64  # the top and wrist cameras joined
    assert report["closed_loop_episodes"] == 10
    metrics = report["metrics"]
    assert metrics["action_r2"] > 0.4 and metrics["state_only_action_r2"] < 0.1
    assert metrics["action_mse"] < metrics["state_only_action_mse"]
    assert metrics["success_rate"] >= 0.5 and metrics["state_only_success_rate"] <= 0.1


@pytest.mark.slow
def test_knn_scores_the_per_episode_task_label_on_held_out_episodes(
    tmp_path: Path, cache: Path
) -> None:
    out = tmp_path / "knn"
    fmcore(
        "eval",
        "eval=knn",
        "checkpoint=pixels",
        "domain=robotics",
        "data.label=task",
        "data.cameras=[top]",
        "data.frame_step=8",
        "trainer.device=cpu",
        "eval.bootstrap=0",
        f"run.dir={out}",
        f"run.cache_dir={cache}",
        cwd=tmp_path,
    )
    report = json.loads((out / "eval.json").read_text())
    assert report["num_classes"] == 2  # the target on the left or on the right half
    assert sum(report["splits"].values()) % 3 == 0  # 3 frames of each episode
    # the red target's half of the table shows in the top camera's pixels (0.77 on this split)
    assert report["metrics"]["accuracy"] > 0.65  # chance: 0.5
