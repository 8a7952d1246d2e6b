"""Episodes in HDF5 files read with h5py: robomimic's schema by default (``data/demo_N`` groups
holding ``actions`` and ``obs/<key>``), other layouts through ``data.hdf5``'s key map.

A camera is a (T, H, W, 3) uint8 dataset in an episode's image group (robomimic's
``obs/agentview_image``: the camera is named ``agentview``, without the ``_image``); the state
is the float datasets ``data.hdf5.state`` names, joined in order (unset: every float dataset
of the group that is not a camera, in name order). Timestamps are ``i / data.hdf5.fps``: the
schema records no time. The task is robocasa's ``ep_meta`` ``lang`` (or a ``task`` attribute).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fmcore.domains.robotics.episodes import ArrayFrames, Episode, UnusableEpisode

SUFFIXES = (".hdf5", ".h5")
IMAGE_SUFFIX = "_image"  # robomimic's camera datasets: obs/<camera>_image


@dataclass(frozen=True)
class Hdf5Layout:
    """Where an HDF5 file keeps its episodes: ``data.hdf5``."""

    episodes: str  # the group holding one group per episode
    observations: str  # inside an episode: the group holding cameras and state
    actions: str  # inside an episode
    state: tuple[str, ...] | None  # inside the observations group; None: every float dataset
    fps: float

    @classmethod
    def from_config(cls, section: DictConfig) -> Hdf5Layout:
        state = section.get("state")
        return cls(
            episodes=str(section.episodes),
            observations=str(section.observations),
            actions=str(section.actions),
            state=tuple(str(key) for key in state) if state is not None else None,
            fps=float(section.fps),
        )


def hdf5_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.glob("**/*") if p.suffix.lower() in SUFFIXES and p.is_file())


def read_hdf5(
    path: Path, source: str, layout: Hdf5Layout
) -> tuple[list[Episode], list[tuple[str, str]]]:
    """The usable episodes of ``path`` and the bad ones as (where, reason);
    :class:`UnusableEpisode` when the file as a whole cannot be read."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise UnusableEpisode(f"{path} is not a readable HDF5 file: {error}") from error
    with handle:
        group = handle.get(layout.episodes)
        if not isinstance(group, h5py.Group):
            raise UnusableEpisode(
                f"{path} has no group '{layout.episodes}' of episodes (data.hdf5.episodes)"
            )
        episodes, bad = [], []
        for order, name in enumerate(sorted(group, key=_demo_order)):
            where = f"{path} {layout.episodes}/{name}"
            try:
                episodes.append(_episode(group[name], order, name, path, source, layout))
            except UnusableEpisode as error:
                bad.append((where, str(error)))
    return episodes, bad


def _demo_order(name: str) -> tuple[int, str]:
    """robomimic's order: demo_2 before demo_10."""
    found = re.search(r"(\d+)$", name)
    return (int(found.group(1)) if found else -1, name)


def _episode(group, order: int, name: str, path: Path, source: str, layout: Hdf5Layout) -> Episode:
    import h5py

    observations = group.get(layout.observations)
    if not isinstance(observations, h5py.Group):
        raise UnusableEpisode(f"has no '{layout.observations}' group (data.hdf5.observations)")
    cameras = {
        key.removesuffix(IMAGE_SUFFIX): ArrayFrames(str(path), observations[key].name)
        for key in sorted(observations)
        if _is_camera(observations[key])
    }
    if not cameras:
        raise UnusableEpisode(
            f"has no images: no (T, H, W, 3) uint8 dataset in '{layout.observations}'"
        )
    lengths = {camera: group.file[frames.key].shape[0] for camera, frames in cameras.items()}
    if len(set(lengths.values())) > 1:
        raise UnusableEpisode(f"its cameras disagree in frame count: {lengths}")
    length = next(iter(lengths.values()))
    if layout.actions not in group:
        raise UnusableEpisode(f"has no '{layout.actions}' dataset (data.hdf5.actions)")
    actions = np.asarray(group[layout.actions], dtype=np.float32)
    number = _demo_order(name)[0]
    return Episode(
        source=source,
        number=number if number >= 0 else order,
        task=_task(group),
        timestamps=np.arange(length, dtype=np.float64) / layout.fps,
        states=_state(observations, layout.state, length),
        actions=actions.reshape(len(actions), -1),
        cameras=cameras,
        where=f"{path} {group.name.lstrip('/')}",
        name=name,
    )


def _task(group) -> str:
    """The episode's instruction: robocasa's ``ep_meta`` JSON attribute (``lang``), or a
    ``task`` attribute; empty when it has neither."""
    meta = group.attrs.get("ep_meta")
    if meta is not None:
        try:
            return str(json.loads(meta).get("lang", ""))
        except (ValueError, AttributeError):
            pass
    return str(group.attrs.get("task", ""))


def _is_camera(item) -> bool:
    import h5py

    return (
        isinstance(item, h5py.Dataset)
        and item.dtype == np.uint8
        and item.ndim == 4
        and item.shape[-1] == 3
    )


def _state(observations, keys: tuple[str, ...] | None, length: int) -> np.ndarray:
    import h5py

    if keys is None:
        keys = tuple(
            key
            for key in sorted(observations)
            if isinstance(observations[key], h5py.Dataset)
            and observations[key].ndim <= 2  # not a depth image: (T, H, W, 1) floats
            and np.issubdtype(observations[key].dtype, np.floating)
        )
    parts = []
    for key in keys:
        if key not in observations:
            raise UnusableEpisode(f"has no state dataset '{key}' (data.hdf5.state)")
        values = np.asarray(observations[key], dtype=np.float32)
        parts.append(values.reshape(len(values), -1))
    if not parts:
        return np.zeros((length, 0), dtype=np.float32)
    if len({len(part) for part in parts}) > 1:
        raise UnusableEpisode(f"its state datasets {', '.join(keys)} differ in length")
    return np.concatenate(parts, axis=1)
