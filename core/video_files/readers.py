"""Decoding a clip's frames, resized so that they cover ``size`` (H, W) and centre-cropped to
it, as (T, H, W, 3) uint8 RGB.

decord decodes straight to the resized frame (``VideoReader(width=, height=)``), so a full-HD
file never decodes at full size into Python; one reader per file and size is kept open per
process (each data-loader worker opens its own, lazily). PyAV reads what decord cannot (and
rotated files, turned as their display matrix says); pydicom reads cine loops frame by frame.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fmcore.errors import BadSample
from fmcore.video_files.probe import VideoInfo, import_decord, nearest_frames

OPEN_READERS = 8  # decord readers kept open per process
FORKED_AWAY: list[Any] = []  # readers a forked process inherited (see ClipReader._decord_reader)


def cover_size(frame: tuple[int, int], size: Sequence[int]) -> tuple[int, int]:
    """(height, width) of ``frame`` scaled, keeping its aspect, to the smallest size that
    covers ``size``."""
    scale = max(size[0] / frame[0], size[1] / frame[1])
    return max(size[0], round(frame[0] * scale)), max(size[1], round(frame[1] * scale))


def center_crop(frames: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The central ``size`` (H, W) of (T, H, W, C) ``frames``."""
    top = (frames.shape[1] - size[0]) // 2
    left = (frames.shape[2] - size[1]) // 2
    return frames[:, top : top + size[0], left : left + size[1]]


def resize(frames: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(T, H, W, C) uint8 ``frames`` resized to ``size`` (antialiased bilinear)."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    out = F.interpolate(tensor, size=tuple(size), mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def fit_frames(frames: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(T, H, W, C) uint8 ``frames`` resized to cover ``size`` (H, W), then centre-cropped."""
    return center_crop(resize(frames, cover_size(frames.shape[1:3], size)), size)


class ClipReader:
    """Reads clips of probed files; picklable, and opens its decord readers lazily."""

    def __init__(self, size: Sequence[int], threads: int = 1) -> None:
        self.size = tuple(int(s) for s in size)  # (H, W)
        self.threads = threads
        self._decord: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
        self._owner = os.getpid()
        self._unresizable: set[tuple[str, int, int]] = set()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_decord": OrderedDict()}  # handles stay in their process

    def read(self, path: str, info: VideoInfo, indices: Sequence[int]) -> np.ndarray:
        """The frames ``indices`` of ``path`` as (T, H, W, 3) uint8 at this reader's size;
        :class:`BadSample` names the file when they cannot be decoded."""
        decode = {"decord": self._read_decord, "pyav": _read_pyav, "dicom": _read_dicom}
        height, width = cover_size(info.display_size, self.size)
        try:
            frames = decode[info.reader](path, info, indices, height, width)
        except BadSample:
            raise
        except Exception as error:
            raise BadSample(path, f"frames {indices[0]}-{indices[-1]}: {error}") from error
        return center_crop(frames, self.size)

    def _read_decord(
        self, path: str, info: VideoInfo, indices: Sequence[int], height: int, width: int
    ) -> np.ndarray:
        if (path, height, width) not in self._unresizable:
            try:
                frames = self._decord_reader(path, height, width).get_batch(list(indices))
                if frames.shape[-1] == 3:
                    return frames.asnumpy()
            except Exception as error:
                if "must exactly match" not in str(error):
                    raise
            # decord 0.6 mis-sizes some resize targets (4-channel frames, or a copy that fails:
            # dmlc/decord#93, #336): decode this file at its own size and resize here instead.
            self._unresizable.add((path, height, width))
        frames = self._decord_reader(path, -1, -1).get_batch(list(indices)).asnumpy()
        return resize(frames, (height, width))

    def _decord_reader(self, path: str, height: int, width: int) -> Any:
        if self._owner != os.getpid():
            # A forked data-loader worker inherits its parent's readers, but not their decoding
            # threads: using one hangs, and so may destroying one. Keep them, untouched.
            FORKED_AWAY.append(self._decord)
            self._decord, self._owner = OrderedDict(), os.getpid()
        key = (path, height, width)
        if key in self._decord:
            self._decord.move_to_end(key)
            return self._decord[key]
        reader = import_decord().VideoReader(
            path, width=width, height=height, num_threads=self.threads
        )
        self._decord[key] = reader
        if len(self._decord) > OPEN_READERS:
            self._decord.popitem(last=False)
        return reader


def _read_pyav(
    path: str, info: VideoInfo, indices: Sequence[int], height: int, width: int
) -> np.ndarray:
    """Seek to the key frame before the first wanted frame, decode forward and keep the wanted
    ones (matched by timestamp), then turn them as the display matrix says."""
    import av

    times = info.frame_times()
    wanted = set(indices)
    last = max(indices)
    coded = (width, height) if info.rotation % 180 else (height, width)
    found: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        start = times[min(indices)]
        container.seek(int(start / stream.time_base), stream=stream, backward=True)
        origin = None
        for frame in container.decode(stream):
            if origin is None:  # the file's first timestamp need not be 0
                origin = float(stream.start_time * stream.time_base) if stream.start_time else 0
            index = int(nearest_frames(times, np.asarray([float(frame.time) - origin]))[0])
            if index in wanted and index not in found:
                found[index] = frame.to_ndarray(format="rgb24", width=coded[1], height=coded[0])
            if index >= last:
                break
    missing = sorted(wanted - found.keys())
    if missing:
        raise BadSample(path, f"frame {missing[0]} of {info.frames} cannot be decoded")
    frames = np.stack([found[i] for i in indices])
    return np.ascontiguousarray(np.rot90(frames, k=info.rotation // 90, axes=(1, 2)))


def _read_dicom(
    path: str, info: VideoInfo, indices: Sequence[int], height: int, width: int
) -> np.ndarray:
    """Cine frames decoded one by one (only those the clip needs), as RGB: greyscale
    ultrasound is repeated over the three channels, YBR colour converted by pydicom."""
    import pydicom
    from pydicom.pixels import pixel_array

    bits = int(pydicom.dcmread(path, stop_before_pixels=True).get("BitsStored") or 8)
    decoded = {index: np.asarray(pixel_array(path, index=int(index))) for index in set(indices)}
    frames = np.stack([decoded[i] for i in indices])
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if bits != 8:
        frames = np.clip(frames.astype(np.float32) * (255 / (2**bits - 1)) + 0.5, 0, 255)
    return resize(frames.astype(np.uint8), (height, width))
