"""What the engine samples over: one frame (or short clip) of one episode, from one camera or
several, with the state and the expert's next actions at that frame beside the pixels."""

from __future__ import annotations

from typing import NamedTuple

from fmcore.video_files.probe import VideoInfo


class CameraRead(NamedTuple):
    """Which frames of one camera a sample decodes: frame numbers of a video file (``info``
    is its probe), or rows of an HDF5 dataset (``key``)."""

    camera: str
    path: str
    indices: tuple[int, ...]
    info: VideoInfo | None = None
    key: str = ""


class FrameRef(NamedTuple):
    """One sample: ``reads`` holds one camera (``data.camera_mode=separate``) or all of them,
    stacked channel-wise. ``actions`` is the action chunk from ``frame`` on, flattened."""

    episode: str  # Episode.id: <source>/episode_<number>
    source: str  # the dataset folder or HDF5 file below data.root
    task: str
    frame: int
    timestamp: float
    reads: tuple[CameraRead, ...]
    state: tuple[float, ...]
    actions: tuple[float, ...]
    label: int = -1

    def __str__(self) -> str:
        cameras = "+".join(read.camera for read in self.reads)
        return f"{self.episode} frame {self.frame} ({cameras})"
