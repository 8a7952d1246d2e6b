"""What the robotics readers find: episodes, each with its per-frame state, actions and
timestamps, and where each camera's frames are stored (a video file or an HDF5 dataset)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class UnusableEpisode(ValueError):
    """An episode (or a whole dataset) that cannot be used, with the reason."""


@dataclass(frozen=True)
class VideoFrames:
    """One camera's frames of an episode inside a video file: the episode's frame ``i`` is
    shown at ``start + timestamps[i]`` seconds of ``path``, and none after ``end`` (LeRobot v3
    packs many episodes into one file, each between its from_ and to_timestamp; v2.1 has one
    file per episode, ``start`` 0 and no ``end``)."""

    path: str
    start: float
    end: float | None = None


@dataclass(frozen=True)
class ArrayFrames:
    """One camera's frames of an episode as a (T, H, W, 3) uint8 dataset ``key`` of the HDF5
    file ``path``."""

    path: str
    key: str


CameraFrames = VideoFrames | ArrayFrames


@dataclass(frozen=True)
class Episode:
    """One demonstration. ``source`` names the dataset it came from (a LeRobot dataset's folder
    or an HDF5 file, below ``data.root``): a site per robot or lab partitions by it."""

    source: str
    number: int  # LeRobot's episode_index, or N of an HDF5 group demo_N
    task: str
    timestamps: np.ndarray  # (T,) seconds from the episode's start
    states: np.ndarray  # (T, S) float32
    actions: np.ndarray  # (T, A) float32
    cameras: dict[str, CameraFrames]
    where: str  # where it is described, for messages: "<folder> episode 3", "<file> data/demo_3"
    name: str | None = None  # its own name where the format gives one (HDF5's demo_3)

    @property
    def id(self) -> str:
        """``<source>/<name>``, or ``<source>/episode_<number>`` (LeRobot's numbering)."""
        return f"{self.source}/{self.name or f'episode_{self.number:06d}'}"

    @property
    def length(self) -> int:
        return len(self.timestamps)

    def __post_init__(self) -> None:
        """:class:`UnusableEpisode` when its arrays disagree in length or it has no frames."""
        if self.length == 0:
            raise UnusableEpisode("has no frames")
        if not self.cameras:
            raise UnusableEpisode("has no camera: no video feature (or no image dataset)")
        for name, values in (("states", self.states), ("actions", self.actions)):
            if len(values) != self.length:
                raise UnusableEpisode(
                    f"has {len(values)} {name} for {self.length} frames: they must match"
                )
