"""The robotics domain on demonstrations written in the real layouts: LeRobot v3.0 (parquet +
H.264 MP4 shared by several episodes) and v2.1 (a file of each per episode) by pyarrow and
PyAV, robomimic HDF5 by h5py. Pixels are checked against the simulator's own rendering, state
and actions against its rollout, and each bad input is named with the rest still used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("h5py", reason="needs the robotics extra: pip install -e '.[robotics]'")
pytest.importorskip("pyarrow", reason="needs the robotics extra: pip install -e '.[robotics]'")

from fmcore.config import compose, config_sources
from fmcore.domains.robotics.data import Robotics, nearest
from fmcore.domains.robotics.reaching import Reaching, run_episode
from fmcore.domains.robotics.sample_data import STATE_KEY, record
from fmcore.domains.robotics.writers import write_lerobot, write_robomimic
from fmcore.errors import ConfigError
from fmcore.plugin_manager import registry

EPISODES = 6
FIRST_SEED = 500
FPS = 10


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same six demonstrations as v3.0 (episodes 0-2 and 3-5 sharing files), v2.1 and
    robomimic HDF5."""
    root = tmp_path_factory.mktemp("robotics")
    recordings = record(EPISODES, first_seed=FIRST_SEED)
    write_lerobot(root / "v3" / "arm", recordings, FPS, "v3.0", episodes_per_file=3)
    write_lerobot(root / "v21" / "arm", recordings, FPS, "v2.1")
    (root / "hdf5").mkdir()
    write_robomimic(root / "hdf5" / "demos.hdf5", recordings, STATE_KEY)
    return {"v3": root / "v3", "v21": root / "v21", "hdf5": root / "hdf5"}


def domain(root: Path, cache: Path, *overrides: str) -> Robotics:
    config = compose(
        ["domain=robotics", f"data.root={root}", *overrides], config_sources(registry())
    )
    return Robotics(config.data, cache)


def copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("layout", ["v3", "v21", "hdf5"])
def test_every_frame_is_the_simulators_frame_with_its_state_and_action(
    datasets: dict[str, Path], tmp_path: Path, layout: str
) -> None:
    fmt = "hdf5" if layout == "hdf5" else "lerobot"
    robotics = domain(datasets[layout], tmp_path, f"data.format={fmt}", "data.action_chunk=2")
    refs = robotics.index("all")
    assert len(refs) == EPISODES * 24 * 2  # every frame of both cameras
    assert robotics.bad_inputs == []
    for ref in refs[::7]:
        number = int(ref.episode.rsplit("_", 1)[1])
        scenes, states, actions, _ = run_episode(FIRST_SEED + number)
        frame = ref.frame
        np.testing.assert_allclose(ref.state, states[frame], rtol=1e-6)
        following = actions[[frame, min(frame + 1, len(actions) - 1)]].reshape(-1)
        np.testing.assert_allclose(ref.actions, following, rtol=1e-6)
        camera = ref.reads[0].camera
        raw = robotics.load(ref).data
        assert raw.shape == (3, 64, 64) and raw.dtype == torch.uint8
        pixels = robotics.to_unit(raw)  # as the device sees it
        error = (pixels - _rendered(scenes[frame], camera)).abs().mean().item()
        if layout == "hdf5":
            assert error == 0  # stored losslessly, at the sample's size
        else:  # H.264: near the right frame, nearer than to a neighbour that looks different
            assert error < 0.02
            for other in (frame - 2, frame + 2):
                if not 0 <= other < len(scenes):
                    continue
                neighbour = _rendered(scenes[other], camera)
                if (neighbour - _rendered(scenes[frame], camera)).abs().mean() > 0.02:
                    assert error < (pixels - neighbour).abs().mean().item() / 2


def _rendered(scene: Reaching, camera: str) -> torch.Tensor:
    return torch.from_numpy(scene.render(camera, 64)).permute(2, 0, 1).float() / 255


def test_v3_and_v21_layouts_give_the_same_samples(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    v3 = domain(datasets["v3"], tmp_path / "a").index("all")
    v21 = domain(datasets["v21"], tmp_path / "b").index("all")
    assert [(r.episode, r.frame, r.state) for r in v3] == [
        (r.episode, r.frame, r.state) for r in v21
    ]
    assert {r.reads[0].path.rsplit("/", 1)[1] for r in v3} == {"file-000.mp4", "file-001.mp4"}


def test_splits_are_by_episode_and_partitions_by_episode_task_and_dataset(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    robotics = domain(datasets["v3"], tmp_path, "data.split_fractions=[0.5,0.25,0.25]")
    episodes = {
        split: {r.episode for r in robotics.index(split)} for split in ("train", "val", "test")
    }
    assert not (episodes["train"] & episodes["val"]) and not (episodes["train"] & episodes["test"])
    assert set().union(*episodes.values()) == {r.episode for r in robotics.index("all")}
    ref = robotics.index("all")[0]
    assert robotics.partition_key(ref, "episode") == "arm/episode_000000"
    assert robotics.partition_key(ref, "dataset") == "arm"
    assert robotics.partition_key(ref, "task").startswith("reach the target on the")


def test_clips_of_stacked_cameras(datasets: dict[str, Path], tmp_path: Path) -> None:
    robotics = domain(
        datasets["hdf5"],
        tmp_path,
        "data.format=hdf5",
        "data.frames=4",
        "data.stride=3",
        "data.frame_step=5",
        "data.camera_mode=stack",
        "data.cameras=[wrist,top]",
    )
    assert Robotics.modality_for(robotics.data) == "video"
    refs = robotics.index("all")
    # a sample every 5th frame of 24, each the clip that ends on it (never later frames)
    assert [r.frame for r in refs[:6]] == [0, 5, 10, 15, 20, 0]
    assert refs[1].reads[0].indices == (0, 0, 2, 5)  # the first frame repeats
    assert refs[3].reads[0].indices == (6, 9, 12, 15)
    raw = robotics.load(refs[3]).data
    assert raw.shape == (6, 4, 64, 64) and raw.dtype == torch.uint8
    sample = robotics.to_unit(raw)
    scenes = run_episode(FIRST_SEED)[0]
    np.testing.assert_array_equal(sample[3:, 1], _rendered(scenes[9], "top"))
    np.testing.assert_array_equal(sample[:3, 3], _rendered(scenes[15], "wrist"))
    normalised = robotics.normalize(sample[None])
    assert normalised.shape == (1, 6, 4, 64, 64)


def test_a_missing_video_leaves_out_the_episodes_it_holds(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    root = copy(datasets["v3"], tmp_path)
    missing = root / "arm/videos/observation.images.wrist/chunk-000/file-001.mp4"
    missing.unlink()
    robotics = domain(root, tmp_path / "cache")
    episodes = {r.episode for r in robotics.index("all")}
    assert episodes == {f"arm/episode_{n:06d}" for n in range(3)}
    assert len(robotics.bad_inputs) == 3
    assert all(str(missing) in bad and "is missing" in bad for bad in robotics.bad_inputs)


def test_an_episode_longer_than_its_rows_or_its_video_is_named(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = copy(datasets["v3"], tmp_path)
    meta = root / "arm/meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(meta).to_pylist()
    rows[1]["length"] = 30  # the data file holds 24 rows of it
    rows[3]["videos/observation.images.top/from_timestamp"] = 2.4  # episode 4's frames
    rows[4]["videos/observation.images.top/from_timestamp"] = 6.0  # past its file's 7.2 s
    pq.write_table(pa.Table.from_pylist(rows), meta)
    robotics = domain(root, tmp_path / "cache")
    episodes = {r.episode for r in robotics.index("all")}
    assert episodes == {f"arm/episode_{n:06d}" for n in (0, 2, 5)}
    first, second, third = robotics.bad_inputs
    assert "episode 1: its length is 30 frames but" in first and "holds 24 rows" in first
    assert "episode 3: its last frame at 4.700 s" in second
    assert "lies past its to_timestamp 2.400 s" in second
    assert "episode 4: its frame 12 at 7.200 s is not in" in third and "file-001.mp4" in third


def test_frames_are_found_in_long_files_despite_float32_timestamps() -> None:
    """LeRobot writes timestamps as float32: 40 s into a 30 fps file they fall a few
    microseconds before the frame's time, and must still find that frame, not the one before."""
    frames = np.arange(30 * 300)
    times = frames / 30
    wanted = (frames.astype(np.float32) / np.float32(30)).astype(np.float64)
    assert (wanted < times).sum() > 1000  # the case the lookup must survive
    np.testing.assert_array_equal(nearest(times, wanted), frames)
    np.testing.assert_array_equal(nearest(times, times + 0.4 / 30), frames)
    np.testing.assert_array_equal(nearest(times, np.array([-1.0, 1e6])), [0, len(frames) - 1])


def test_hdf5_demos_without_images_or_with_short_actions_are_named(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    import h5py

    root = copy(datasets["hdf5"], tmp_path)
    with h5py.File(root / "demos.hdf5", "r+") as handle:
        for camera in ("top_image", "wrist_image"):
            del handle["data/demo_2/obs"][camera]
        actions = handle["data/demo_4/actions"][:]
        del handle["data/demo_4/actions"]
        handle["data/demo_4"].create_dataset("actions", data=actions[:20])
    robotics = domain(root, tmp_path / "cache", "data.format=hdf5")
    episodes = {r.episode for r in robotics.index("all")}
    assert episodes == {f"demos.hdf5/demo_{n}" for n in (0, 1, 3, 5)}
    no_images, short = robotics.bad_inputs
    assert "data/demo_2: has no images" in no_images
    assert "data/demo_4: has 20 actions for 24 frames" in short


def test_a_dataset_whose_info_cannot_be_read_is_named_and_others_are_used(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "sites"
    shutil.copytree(datasets["v3"] / "arm", root / "lab_a")
    shutil.copytree(datasets["v21"] / "arm", root / "lab_b")
    info = root / "lab_b/meta/info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "codebase_version": "v1.6"}))
    robotics = domain(root, tmp_path / "cache")
    assert {r.source for r in robotics.index("all")} == {"lab_a"}
    (bad,) = robotics.bad_inputs
    assert "lab_b/meta/info.json: codebase_version 'v1.6' is not read" in bad


def test_wrong_settings_are_named(datasets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.format=zarr: choose lerobot or hdf5"):
        domain(datasets["v3"], tmp_path, "data.format=zarr")
    with pytest.raises(ConfigError, match="holds no LeRobot dataset"):
        domain(datasets["hdf5"], tmp_path).index("all")
    robotics = domain(datasets["v3"], tmp_path, "data.cameras=[side]")
    assert robotics.index("all") == []
    assert "has no camera side (data.cameras); it has top, wrist" in robotics.bad_inputs[0]
    with pytest.raises(ConfigError, match=r"data.camera_mode=stack needs data.cameras"):
        domain(datasets["v3"], tmp_path, "data.camera_mode=stack").channels  # noqa: B018


def test_the_state_key_must_name_a_feature(datasets: dict[str, Path], tmp_path: Path) -> None:
    robotics = domain(datasets["v3"], tmp_path, "data.state_key=observation.joints")
    assert robotics.index("all") == []
    assert "has no feature 'observation.joints'" in robotics.bad_inputs[0]
    assert OmegaConf.select(robotics.data, "state_key") == "observation.joints"
