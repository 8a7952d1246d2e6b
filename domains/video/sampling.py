"""Which frames make a clip: ``data.frames`` frames every ``data.sampling_rate`` frames, or
every ``1 / data.fps`` seconds of a file's own timestamps (variable frame rates included).

A clip's place in its video is a fraction of the free room (0: at the start, 1: ending on the
last frame), drawn once in ``index`` so that loading a reference is deterministic. A video
shorter than a clip either repeats its last frame to fill the clip (VideoMAE's loader does the
same) or is left out, as ``data.short_videos`` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from fmcore.errors import ConfigError
from fmcore.video_files.probe import VideoInfo, nearest_frames

JITTER = ("random", "uniform")
SHORT_VIDEOS = ("pad", "skip")


@dataclass(frozen=True)
class ClipSampling:
    """The clip settings of ``data``."""

    frames: int
    sampling_rate: int
    fps: float | None
    clips_per_video: int
    jitter: str
    short_videos: str

    @classmethod
    def from_config(cls, data: DictConfig, frames: int) -> ClipSampling:
        sampling = cls(
            frames=frames,
            sampling_rate=int(data.sampling_rate),
            fps=float(data.fps) if data.get("fps") is not None else None,
            clips_per_video=int(data.clips_per_video),
            jitter=str(data.get("temporal_jitter") or "random"),
            short_videos=str(data.get("short_videos") or "pad"),
        )
        checks = {
            "data.sampling_rate": sampling.sampling_rate >= 1,
            "data.fps": sampling.fps is None or sampling.fps > 0,
            "data.clips_per_video": sampling.clips_per_video >= 1,
        }
        for key, fine in checks.items():
            if not fine:
                raise ConfigError(f"{key}={data.get(key.split('.')[1])} must be positive")
        for key, value, valid in (
            ("data.temporal_jitter", sampling.jitter, JITTER),
            ("data.short_videos", sampling.short_videos, SHORT_VIDEOS),
        ):
            if value not in valid:
                raise ConfigError(f"{key}={value}: valid are {', '.join(valid)}")
        return sampling

    def positions(self, rng: np.random.Generator) -> list[float]:
        """Where each of a video's clips starts, as a fraction of the free room: drawn at
        random, or (``uniform``) spread evenly over the video, as multi-clip testing does."""
        if self.jitter == "uniform":
            count = self.clips_per_video
            return [0.5] if count == 1 else [k / (count - 1) for k in range(count)]
        return [float(p) for p in rng.random(self.clips_per_video)]

    def fits(self, info: VideoInfo) -> bool:
        """Whether ``info``'s video holds a whole clip without repeating frames."""
        if self.fps is None:
            return info.frames >= (self.frames - 1) * self.sampling_rate + 1
        times = info.frame_times()
        return times[-1] - times[0] >= (self.frames - 1) / self.fps

    def indices(self, info: VideoInfo, position: float) -> tuple[int, ...]:
        """The frame indices of the clip at ``position`` (see :meth:`positions`); past the
        video's end, the last frame repeats."""
        if self.fps is None:
            span = (self.frames - 1) * self.sampling_rate + 1
            start = round(position * max(info.frames - span, 0))
            wanted = start + self.sampling_rate * np.arange(self.frames)
            return tuple(int(i) for i in np.minimum(wanted, info.frames - 1))
        times = info.frame_times()
        room = max(times[-1] - times[0] - (self.frames - 1) / self.fps, 0.0)
        wanted = times[0] + position * room + np.arange(self.frames) / self.fps
        return tuple(int(i) for i in nearest_frames(times, wanted))
