"""Video files written by real encoders: PyAV (FFmpeg's libx264, libx265, libvpx, MJPEG...) for
containers, pydicom for multi-frame ultrasound cine loops. The embedded samples and the tests
write their files with these."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from fmcore.dicom_writing import new_dicom

QUIET = {"libx265": {"x265-params": "log-level=error"}}  # x265 prints its settings otherwise


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: float,
    codec: str = "libx264",
    pixel_format: str = "yuv420p",
    rotation: int = 0,
    times: Sequence[float] | None = None,
    gop: int | None = None,
) -> None:
    """(T, H, W, 3) uint8 RGB ``frames`` encoded with ``codec`` into ``path`` (the container
    follows its extension). ``rotation`` (counter-clockwise degrees) goes into the display
    matrix, as phones record portrait video; ``times`` (seconds) makes a variable-frame-rate
    file; ``gop`` sets the frames from one key frame to the next (None: the encoder's
    default, 250 for libx264)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pixel_format
        stream.options = QUIET.get(codec, {})
        if gop is not None:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for number, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[number] * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_cine(path: Path, frames: np.ndarray, frame_time_ms: float, name: str) -> None:
    """(T, H, W) uint8 greyscale ``frames`` as a multi-frame ultrasound DICOM (Ultrasound
    Multi-frame Image Storage) with its cine timing (FrameTime, FrameIncrementPointer)."""
    from pydicom.tag import Tag
    from pydicom.uid import UltrasoundMultiFrameImageStorage

    ds = new_dicom(UltrasoundMultiFrameImageStorage, name, "US")
    ds.NumberOfFrames = len(frames)
    ds.FrameTime = f"{frame_time_ms:.3f}"
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
