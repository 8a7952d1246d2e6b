"""What the engine samples over: one clip of one video, its frames chosen in ``index``."""

from __future__ import annotations

from typing import NamedTuple

from fmcore.video_files.probe import VideoInfo


class ClipRef(NamedTuple):
    """One clip: the file, what its probe found, and the frame indices to decode."""

    path: str
    video_id: str  # the file's path below data.root
    info: VideoInfo
    indices: tuple[int, ...]
    label: int = -1

    def __str__(self) -> str:
        """The clip as messages and ``fmcore embed``'s sample ids name it: file and frames."""
        return f"{self.path} frames {self.indices[0]}-{self.indices[-1]}"
