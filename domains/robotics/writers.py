"""Robot demonstrations written in the layouts robot-learning users keep them in, by the real
libraries: LeRobot datasets (v3.0: many episodes per parquet and MP4 file; v2.1: one file per
episode) with pyarrow and PyAV's H.264 encoder, and robomimic HDF5 files with h5py. The
embedded sample and the tests write their datasets with these."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmcore.domains.robotics.lerobot import CAMERA_PREFIX
from fmcore.video_files.writers import write_video

V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V21_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
CHUNKS_SIZE = 1000
LEROBOT_GOP = 2  # LeRobot encodes a key frame every 2 frames: a frame decodes without a long seek
STATE, ACTION = "observation.state", "action"


@dataclass(frozen=True)
class Recording:
    """One recorded demonstration: each camera's (T, H, W, 3) uint8 frames, the (T, S) states
    and (T, A) actions, its task, and whether it succeeded."""

    frames: dict[str, np.ndarray]
    states: np.ndarray
    actions: np.ndarray
    task: str
    success: bool


def write_lerobot(
    directory: Path,
    recordings: Sequence[Recording],
    fps: int,
    version: str = "v3.0",
    episodes_per_file: int | None = None,
    gop: int | None = None,
) -> None:
    """``recordings`` as a LeRobot dataset in ``directory``: ``version`` "v3.0" packs up to
    ``episodes_per_file`` episodes (all when None) into each data and video file; "v2.1" writes
    one file of each per episode. ``gop``: frames from one key frame to the next (None:
    libx264's default, 250; LeRobot's recorder uses ``LEROBOT_GOP``)."""
    if version not in ("v3.0", "v2.1"):
        raise ValueError(f"LeRobot codebase_version {version}: write v3.0 or v2.1")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta").mkdir(exist_ok=True)
    tasks = sorted({r.task for r in recordings})
    cameras = sorted(recordings[0].frames)
    starts = np.cumsum([0] + [len(r.states) for r in recordings])
    info = {
        "codebase_version": version,
        "robot_type": "planar_two_link_arm",
        "total_episodes": len(recordings),
        "total_frames": int(starts[-1]),
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "fps": fps,
        "splits": {"train": f"0:{len(recordings)}"},
        "data_path": V3_DATA if version == "v3.0" else V21_DATA,
        "video_path": V3_VIDEO if version == "v3.0" else V21_VIDEO,
        "features": _features(recordings[0], cameras, fps, gop),
    }
    if version == "v2.1":
        info["total_videos"] = len(recordings) * len(cameras)
        info["total_chunks"] = (len(recordings) - 1) // CHUNKS_SIZE + 1
    else:
        info["data_files_size_in_mb"], info["video_files_size_in_mb"] = 100, 200
    (directory / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    _write_stats(directory / "meta" / "stats.json", recordings)
    tables = [
        _episode_table(r, number, int(starts[number]), tasks.index(r.task), fps)
        for number, r in enumerate(recordings)
    ]
    if version == "v2.1":
        _write_v21(directory, recordings, tables, tasks, cameras, fps, gop)
    else:
        per_file = episodes_per_file or len(recordings)
        _write_v3(directory, recordings, tables, tasks, cameras, fps, per_file, gop)


def write_robomimic(path: Path, recordings: Sequence[Recording], state_key: str) -> None:
    """``recordings`` in robomimic's HDF5 schema: ``data/demo_N`` groups holding ``actions``,
    ``rewards``, ``dones`` and ``obs/<camera>_image`` frames with ``obs/<state_key>``, plus the
    ``data`` attributes (``total``, ``env_args``), each demo's ``ep_meta`` (its task as
    ``lang``, as robocasa writes it) and ``mask/train``, ``mask/valid``."""
    import h5py

    with h5py.File(path, "w") as handle:
        data = handle.create_group("data")
        data.attrs["total"] = sum(len(r.states) for r in recordings)
        data.attrs["env_args"] = json.dumps(
            {"env_name": "PlanarReach", "env_type": 0, "env_kwargs": {}}
        )
        names = []
        for number, recording in enumerate(recordings):
            name = f"demo_{number}"
            names.append(name)
            demo = data.create_group(name)
            length = len(recording.states)
            demo.attrs["num_samples"] = length
            demo.attrs["ep_meta"] = json.dumps({"lang": recording.task})  # robocasa's episode meta
            demo.create_dataset("actions", data=recording.actions)
            rewards = np.zeros(length, dtype=np.float64)
            rewards[-1] = float(recording.success)
            demo.create_dataset("rewards", data=rewards)
            dones = np.zeros(length, dtype=np.int64)
            dones[-1] = 1
            demo.create_dataset("dones", data=dones)
            obs = demo.create_group("obs")
            obs.create_dataset(state_key, data=recording.states)
            for camera, frames in recording.frames.items():
                obs.create_dataset(
                    f"{camera}_image",
                    data=frames,
                    chunks=(1, *frames.shape[1:]),  # a frame reads without its neighbours
                    compression="gzip",  # as robomimic's dataset_states_to_obs writes images
                )
        mask = handle.create_group("mask")
        split = max(1, len(names) * 9 // 10)
        mask.create_dataset("train", data=np.array(names[:split], dtype="S"))
        mask.create_dataset("valid", data=np.array(names[split:], dtype="S"))


def _features(recording: Recording, cameras: Sequence[str], fps: int, gop: int | None) -> dict:
    def vector(values: np.ndarray, prefix: str) -> dict:
        width = values.shape[1]
        return {
            "dtype": "float32",
            "shape": [width],
            "names": [f"{prefix}_{i}" for i in range(width)],
        }

    features = {
        STATE: vector(recording.states, "state"),
        ACTION: vector(recording.actions, "action"),
    }
    for camera in cameras:
        height, width = recording.frames[camera].shape[1:3]
        features[CAMERA_PREFIX + camera] = {
            "dtype": "video",
            "shape": [height, width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": height,
                "video.width": width,
                "video.codec": "h264",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": fps,
                "video.channels": 3,
                "has_audio": False,
                **({"video.g": gop} if gop else {}),
            },
        }
    for name, dtype in (
        ("timestamp", "float32"),
        ("frame_index", "int64"),
        ("episode_index", "int64"),
        ("index", "int64"),
        ("task_index", "int64"),
    ):
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    return features


def _episode_table(recording: Recording, number: int, first_index: int, task: int, fps: int):
    import pyarrow as pa

    length = len(recording.states)

    def vectors(values: np.ndarray):
        flat = pa.array(values.astype(np.float32).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])

    return pa.table(
        {
            STATE: vectors(recording.states),
            ACTION: vectors(recording.actions),
            "timestamp": pa.array(np.arange(length, dtype=np.float32) / fps),
            "frame_index": pa.array(np.arange(length, dtype=np.int64)),
            "episode_index": pa.array(np.full(length, number, dtype=np.int64)),
            "index": pa.array(np.arange(first_index, first_index + length, dtype=np.int64)),
            "task_index": pa.array(np.full(length, task, dtype=np.int64)),
        }
    )


def _write_v3(directory, recordings, tables, tasks, cameras, fps, per_file, gop) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for file_index, first in enumerate(range(0, len(recordings), per_file)):
        members = range(first, min(first + per_file, len(recordings)))
        location = {
            "chunk_index": file_index // CHUNKS_SIZE,
            "file_index": file_index % CHUNKS_SIZE,
        }
        data_file = directory / V3_DATA.format(**location)
        data_file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables([tables[n] for n in members]), data_file)
        for camera in cameras:
            video = directory / V3_VIDEO.format(video_key=CAMERA_PREFIX + camera, **location)
            video.parent.mkdir(parents=True, exist_ok=True)
            frames = np.concatenate([recordings[n].frames[camera] for n in members])
            write_video(video, frames, fps, gop=gop)
        elapsed = {camera: 0.0 for camera in cameras}
        for number in members:
            length = len(recordings[number].states)
            row = {
                "episode_index": number,
                "tasks": [recordings[number].task],
                "length": length,
                "data/chunk_index": location["chunk_index"],
                "data/file_index": location["file_index"],
                "dataset_from_index": int(tables[number]["index"][0].as_py()),
                "dataset_to_index": int(tables[number]["index"][-1].as_py()) + 1,
            }
            for camera in cameras:
                key = f"videos/{CAMERA_PREFIX}{camera}"
                row[f"{key}/chunk_index"] = location["chunk_index"]
                row[f"{key}/file_index"] = location["file_index"]
                row[f"{key}/from_timestamp"] = elapsed[camera]
                elapsed[camera] += length / fps
                row[f"{key}/to_timestamp"] = elapsed[camera]
            row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
            rows.append(row)
    episodes = directory / V3_EPISODES.format(chunk_index=0, file_index=0)
    episodes.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), episodes)
    # pandas writes the task strings as the frame's index, a column named "task" in the file.
    pq.write_table(
        pa.table({"task_index": list(range(len(tasks))), "task": tasks}),
        directory / "meta" / "tasks.parquet",
    )


def _write_v21(directory, recordings, tables, tasks, cameras, fps, gop) -> None:
    import pyarrow.parquet as pq

    with open(directory / "meta" / "episodes.jsonl", "w") as episodes:
        for number, recording in enumerate(recordings):
            location = {"episode_chunk": number // CHUNKS_SIZE, "episode_index": number}
            data_file = directory / V21_DATA.format(**location)
            data_file.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(tables[number], data_file)
            for camera in cameras:
                video = directory / V21_VIDEO.format(video_key=CAMERA_PREFIX + camera, **location)
                video.parent.mkdir(parents=True, exist_ok=True)
                write_video(video, recording.frames[camera], fps, gop=gop)
            line = {
                "episode_index": number,
                "tasks": [recording.task],
                "length": len(recording.states),
            }
            episodes.write(json.dumps(line) + "\n")
    with open(directory / "meta" / "tasks.jsonl", "w") as handle:
        for number, task in enumerate(tasks):
            handle.write(json.dumps({"task_index": number, "task": task}) + "\n")


def _write_stats(path: Path, recordings: Sequence[Recording]) -> None:
    stats = {}
    for key, values in (
        (STATE, np.concatenate([r.states for r in recordings])),
        (ACTION, np.concatenate([r.actions for r in recordings])),
    ):
        stats[key] = {
            "min": values.min(0).tolist(),
            "max": values.max(0).tolist(),
            "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(),
            "count": [len(values)],
        }
    path.write_text(json.dumps(stats, indent=4))
