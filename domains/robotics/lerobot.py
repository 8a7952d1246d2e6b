"""LeRobot datasets (codebase v3.x and v2.x) read from a local folder with pyarrow, without the
``lerobot`` package.

The layout comes from the dataset's ``meta/info.json``: ``features`` (the cameras are the
features of dtype ``video``), ``data_path`` and ``video_path`` (templates). v3 lists its
episodes in ``meta/episodes/**.parquet`` rows, each naming the data file and, per camera, the
video file and the episode's ``from_timestamp`` in it (many episodes share a file); v2 lists
them in ``meta/episodes.jsonl``, one data and one video file per episode. An episode the files
do not back (a missing file, fewer data rows than its length) is returned as bad with its
reason; the rest of the dataset is still used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmcore.domains.robotics.episodes import Episode, UnusableEpisode, VideoFrames

INFO = Path("meta") / "info.json"
CAMERA_PREFIX = "observation.images."  # stripped from camera keys: data.cameras=[top, wrist]
FRAME_COLUMNS = ("episode_index", "frame_index", "timestamp")

BadEpisodes = list[tuple[str, str]]  # (where, reason)


def is_lerobot_dataset(folder: Path) -> bool:
    return (folder / INFO).is_file()


def camera_name(key: str) -> str:
    return key.removeprefix(CAMERA_PREFIX)


def read_lerobot(
    folder: Path, source: str, state_key: str, action_key: str
) -> tuple[list[Episode], BadEpisodes]:
    """The usable episodes of the dataset in ``folder``, and the bad ones as (where, reason);
    :class:`UnusableEpisode` when the dataset as a whole cannot be read."""
    info = _read_info(folder)
    version = str(info.get("codebase_version", ""))
    features: dict[str, Any] = info["features"]
    cameras = [key for key, feature in features.items() if feature.get("dtype") == "video"]
    for key in (state_key, action_key):
        if key not in features:
            raise UnusableEpisode(
                f"{folder / INFO}: has no feature '{key}' (its features: {', '.join(features)});"
                " set data.state_key / data.action_key to the dataset's names"
            )
    v3 = version.startswith("v3")
    if v3:
        rows = _v3_episode_rows(folder)
    elif version.startswith("v2"):
        rows = _v2_episode_rows(folder)
    else:
        raise UnusableEpisode(
            f"{folder / INFO}: codebase_version '{version}' is not read (v2.x and v3.x are)"
        )
    chunks_size = int(info.get("chunks_size") or 1000)
    tables: dict[Path, Any] = {}
    episodes: list[Episode] = []
    bad: BadEpisodes = []
    for row in rows:
        number = int(row["episode_index"])
        where = f"{folder} episode {number}"
        try:
            data_place = _data_place(row, number, chunks_size, v3)
            data_file = folder / str(info["data_path"]).format(**data_place)
            if data_file not in tables:
                tables[data_file] = _read_data(data_file, state_key, action_key)
            episode = _episode(
                tables[data_file], number, int(row["length"]), data_file, state_key, action_key
            )
            videos = {}
            for key in cameras:
                place, start, end = _video_place(row, key, number, chunks_size, v3)
                video = folder / str(info["video_path"]).format(video_key=key, **place)
                if not video.is_file():
                    raise UnusableEpisode(f"its {key} video {video} is missing")
                videos[camera_name(key)] = VideoFrames(str(video), start, end)
            episodes.append(
                Episode(
                    source=source,
                    number=number,
                    task="; ".join(row.get("tasks") or []),
                    timestamps=episode["timestamp"],
                    states=episode[state_key],
                    actions=episode[action_key],
                    cameras=videos,
                    where=where,
                )
            )
        except UnusableEpisode as error:
            bad.append((where, str(error)))
        except (KeyError, TypeError, ValueError) as error:  # a row without a column it needs
            bad.append((where, f"its meta/episodes row cannot be read: {error!r}"))
    return episodes, bad


def _read_info(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / INFO).read_text())
    except (OSError, ValueError) as error:
        raise UnusableEpisode(f"{folder / INFO} cannot be read: {error}") from error
    missing = [key for key in ("features", "data_path") if key not in info]
    videos = any(f.get("dtype") == "video" for f in info.get("features", {}).values())
    if videos and not info.get("video_path"):
        missing.append("video_path")
    if missing:
        raise UnusableEpisode(f"{folder / INFO} has no {', '.join(missing)}")
    return info


def _v3_episode_rows(folder: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((folder / "meta" / "episodes").glob("**/*.parquet"))
    if not files:
        raise UnusableEpisode(f"{folder}: a v3 dataset without meta/episodes/**/*.parquet")
    rows: list[dict[str, Any]] = []
    for file in files:
        try:
            columns = [
                name
                for name in pq.read_schema(file).names
                if not name.startswith("stats/")  # per-episode statistics: many columns, unused
            ]
            rows.extend(pq.read_table(file, columns=columns).to_pylist())
        except (OSError, pa.ArrowException) as error:
            raise UnusableEpisode(f"{file} cannot be read: {error}") from error
    if any("episode_index" not in row for row in rows):
        raise UnusableEpisode(f"{folder}: meta/episodes rows without an episode_index")
    return sorted(rows, key=lambda row: int(row["episode_index"]))


def _v2_episode_rows(folder: Path) -> list[dict[str, Any]]:
    file = folder / "meta" / "episodes.jsonl"
    try:
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as error:
        raise UnusableEpisode(f"{file} cannot be read: {error}") from error
    if any(not isinstance(row, dict) or "episode_index" not in row for row in rows):
        raise UnusableEpisode(f"{file}: lines without an episode_index")
    return rows


def _data_place(row: dict[str, Any], number: int, chunks_size: int, v3: bool) -> dict:
    """The ``data_path`` template's fields for the episode's data file."""
    if v3:
        return {"chunk_index": row["data/chunk_index"], "file_index": row["data/file_index"]}
    return {"episode_chunk": number // chunks_size, "episode_index": number}


def _video_place(
    row: dict[str, Any], key: str, number: int, chunks_size: int, v3: bool
) -> tuple[dict, float, float | None]:
    """The ``video_path`` template's fields for camera ``key``'s file, and where the episode
    begins and ends in it (seconds): a v3 row names each camera's file, a v2 episode owns its
    files."""
    if not v3:
        return {"episode_chunk": number // chunks_size, "episode_index": number}, 0.0, None
    prefix = f"videos/{key}/"
    if prefix + "chunk_index" not in row:
        raise UnusableEpisode(f"meta/episodes names no video file for {key}")
    place = {"chunk_index": row[prefix + "chunk_index"], "file_index": row[prefix + "file_index"]}
    end = row.get(prefix + "to_timestamp")
    return place, float(row[prefix + "from_timestamp"]), None if end is None else float(end)


def _read_data(file: Path, state_key: str, action_key: str) -> dict[str, np.ndarray]:
    """The frame columns of a data parquet file as arrays (vectors as (rows, width))."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not file.is_file():
        raise UnusableEpisode(f"its data file {file} is missing")
    try:
        table = pq.read_table(file, columns=[*FRAME_COLUMNS, state_key, action_key])
    except (OSError, pa.ArrowException) as error:
        raise UnusableEpisode(f"its data file {file} cannot be read: {error}") from error
    arrays: dict[str, np.ndarray] = {}
    for name in FRAME_COLUMNS:
        arrays[name] = table.column(name).to_numpy()
    for name in (state_key, action_key):
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
            arrays[name] = values.reshape(len(table), -1).astype(np.float32)
        else:
            arrays[name] = column.to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
    arrays["episode_order"] = np.argsort(arrays["episode_index"], kind="stable")
    arrays["episode_sorted"] = arrays["episode_index"][arrays["episode_order"]]
    return arrays


def _episode(
    data: dict[str, np.ndarray],
    number: int,
    length: int,
    data_file: Path,
    state_key: str,
    action_key: str,
) -> dict[str, np.ndarray]:
    first, last = np.searchsorted(data["episode_sorted"], [number, number + 1])
    rows = data["episode_order"][first:last]  # one sort per file, not a scan per episode
    if len(rows) != length:
        raise UnusableEpisode(
            f"its length is {length} frames but {data_file} holds {len(rows)} rows of it"
        )
    rows = rows[np.argsort(data["frame_index"][rows], kind="stable")]
    return {
        "timestamp": data["timestamp"][rows].astype(np.float64),
        state_key: data[state_key][rows],
        action_key: data[action_key][rows],
    }


def lerobot_datasets(root: Path) -> Sequence[Path]:
    """``root`` when it is a LeRobot dataset, else every dataset folder below it."""
    if is_lerobot_dataset(root):
        return [root]
    return sorted(info.parent.parent for info in root.glob("**/meta/info.json"))
