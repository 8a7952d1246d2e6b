"""What a video file holds (frames, frame rate, size, rotation, which reader decodes it), found
once per file and kept in an index cache keyed by path, size and modification time, so a folder
of many clips is not re-probed every run.

Containers are probed with decord (frame count and timestamps from the index, no decoding) and
PyAV (the first frame, for its display rotation). A file decord cannot open, or a rotated one
(decord ignores the display matrix), is read with PyAV instead, and its frames are counted by
decoding it once. Multi-frame DICOM cine loops are probed from their header with pydicom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fmcore.file_checks import is_dicom
from fmcore.probe_cache import probe_files

CACHE_VERSION = 2  # bump when what a probe records changes (2: the shared probe cache)
UNIFORM_TOLERANCE = 0.5  # frames: a timestamp further than this from i / fps makes a file VFR


class UnreadableVideo(ValueError):
    """A file that cannot be used, with the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """One probed video file."""

    frames: int  # decodable frames
    fps: float  # average frame rate; 0: unknown (a DICOM without a frame time)
    width: int  # coded size, before rotation
    height: int
    reader: str  # decord, pyav or dicom
    rotation: int = 0  # counter-clockwise degrees the display matrix asks for (0/90/180/270)
    timestamps: tuple[float, ...] | None = None  # seconds per frame, only when not i / fps
    note: str | None = None  # why a container is read with PyAV rather than decord

    @property
    def display_size(self) -> tuple[int, int]:
        """(height, width) of a frame once rotated for display."""
        if self.rotation % 180:
            return self.width, self.height
        return self.height, self.width

    def frame_times(self) -> np.ndarray:
        """Each frame's presentation time in seconds."""
        if self.timestamps is not None:
            return np.asarray(self.timestamps, dtype=np.float64)
        if self.fps <= 0:
            raise UnreadableVideo("has no frame rate (data.fps needs one): set data.sampling_rate")
        return np.arange(self.frames, dtype=np.float64) / self.fps


def nearest_frames(times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted time, the index of the frame shown then: the last frame whose time is
    not after it (the first frame for times before the video starts)."""
    shown = np.searchsorted(times, wanted + 1e-6, side="right") - 1
    return np.clip(shown, 0, len(times) - 1)


def import_decord():
    """decord, imported after PyAV. decord loads its own FFmpeg 4 libraries (libvpx among them)
    with global symbols; loaded first, they stand in for PyAV's, whose VP8/VP9 encoders then
    fail to open."""
    import av  # noqa: F401
    import decord

    return decord


def probe(path: Path) -> VideoInfo:
    """The :class:`VideoInfo` of ``path``; :class:`UnreadableVideo` says why it cannot be used."""
    info = _probe_dicom(path) if is_dicom(path) else _probe_container(path)
    if info.frames < 1:
        raise UnreadableVideo("has no frames")
    return info


def average_rate(times: np.ndarray) -> float:
    """Frames per second over ``times`` (seconds, ascending); 0 when they span no time."""
    span = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0


def _irregular(times: np.ndarray, fps: float) -> tuple[float, ...] | None:
    """``times`` when they stray from ``i / fps`` (a variable-frame-rate file), else None."""
    if fps <= 0 or len(times) < 2:
        return None
    expected = times[0] + np.arange(len(times)) / fps
    if np.abs(times - expected).max() * fps <= UNIFORM_TOLERANCE:
        return None
    return tuple(float(t) for t in times - times[0])


def _probe_container(path: Path) -> VideoInfo:
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise UnreadableVideo(f"cannot be opened: {error}") from error
    with container:
        if not container.streams.video:
            raise UnreadableVideo("has no video stream")
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as error:
            raise UnreadableVideo(f"its first frame cannot be decoded: {error}") from error
        if first is None:
            raise UnreadableVideo("has no frames")
        rotation = round(first.rotation / 90) * 90 % 360
        width, height = stream.codec_context.width, stream.codec_context.height
    if rotation:
        note = f"rotated by {rotation} degrees, which decord ignores"
    else:
        try:
            return _probe_decord(path, width, height)
        except Exception as error:  # decord raises its own DECORDError and RuntimeError
            note = f"decord cannot read it ({_decord_reason(error)})"
    times = _decode_times(path)
    return VideoInfo(
        frames=len(times),
        fps=average_rate(times),
        width=width,
        height=height,
        reader="pyav",
        rotation=rotation,
        timestamps=tuple(float(t) for t in times - times[0]) if len(times) else (),
        note=f"{note}; reading it with PyAV",
    )


def _decord_reason(error: Exception) -> str:
    """decord's message without its source location: "[time] file.cc:151: Check failed: ...
    ERROR cannot find video stream" -> "cannot find video stream"."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return message.rsplit("ERROR ", 1)[-1].strip()[:200]


def _probe_decord(path: Path, width: int, height: int) -> VideoInfo:
    reader = import_decord().VideoReader(str(path), num_threads=1)
    frames = len(reader)
    fps = float(reader.get_avg_fps())
    times = reader.get_frame_timestamp(range(frames))[:, 0].astype(np.float64) if frames else []
    return VideoInfo(
        frames=frames,
        fps=fps,
        width=width,
        height=height,
        reader="decord",
        timestamps=_irregular(np.asarray(times), fps),
    )


def _decode_times(path: Path) -> np.ndarray:
    """Every decodable frame's time, in presentation order: decoding stops at the first error,
    so a truncated file counts the frames before the damage."""
    import av

    times = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                times.append(float(frame.time if frame.time is not None else len(times)))
        except av.FFmpegError:
            pass
    return np.sort(np.asarray(times, dtype=np.float64))


def _probe_dicom(path: Path) -> VideoInfo:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as error:
        raise UnreadableVideo(f"is not a readable DICOM file: {error}") from error
    frames = int(header.get("NumberOfFrames") or 1)
    if frames < 2:
        raise UnreadableVideo("is a single-frame DICOM image, not a cine loop")
    if "Rows" not in header or "Columns" not in header:
        raise UnreadableVideo("is a DICOM file without an image (no Rows/Columns)")
    fps, timestamps = _dicom_timing(header, frames)
    return VideoInfo(
        frames=frames,
        fps=fps,
        width=int(header.Columns),
        height=int(header.Rows),
        reader="dicom",
        timestamps=timestamps,
    )


def _dicom_timing(header, frames: int) -> tuple[float, tuple[float, ...] | None]:
    """Frame rate and, when frames are unevenly spaced, timestamps, from the cine module:
    FrameTime (ms per frame), FrameTimeVector (ms since the previous frame), else CineRate or
    RecommendedDisplayFrameRate (frames per second)."""
    vector = header.get("FrameTimeVector")
    if vector is not None and len(vector) == frames:
        times = np.cumsum(np.asarray([float(v) for v in vector], dtype=np.float64)) / 1000
        fps = average_rate(times)
        return fps, _irregular(times - times[0], fps)
    frame_time = header.get("FrameTime")
    if frame_time and float(frame_time) > 0:
        return 1000.0 / float(frame_time), None
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = header.get(keyword)
        if rate and float(rate) > 0:
            return float(rate), None
    return 0.0, None


def probe_all(
    paths: Sequence[Path],
    cache_file: Path,
    workers: int = 4,
) -> list[VideoInfo | str]:
    """Each path's :class:`VideoInfo`, or the reason it cannot be used, probed once per file
    and kept in ``cache_file`` (:func:`fmcore.probe_cache.probe_files`)."""
    found = probe_files(
        paths,
        cache_file,
        lambda path: asdict(probe(path)),
        UnreadableVideo,
        CACHE_VERSION,
        workers,
    )
    return [facts if isinstance(facts, str) else _info(facts) for facts in found]


def _info(facts: dict) -> VideoInfo:
    info = dict(facts)
    if info["timestamps"] is not None:
        info["timestamps"] = tuple(info["timestamps"])
    return VideoInfo(**info)
