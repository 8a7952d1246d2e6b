"""The embedded samples: moving shapes written as real video files, and an ultrasound cine.

Each video pans over a random texture, horizontally or vertically, with one or two shapes (a
disc or a square, of any colour and size) moving along the same axis at their own speeds and
bouncing off the frame's edges. No single frame tells the two apart: the axis of motion is the
class, so an encoder must see change over time to separate them (``data.sample=labelled``, with
``labels.csv``: half the videos train, a quarter validate, a quarter test). Horizontal and
vertical motion stay what they are under the views' horizontal flip. The plain sample (what
``fmcore train domain=video`` trains on without data) writes such clips in every container and
codec the domain reads, and a DICOM cine loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmcore.labels import SAMPLE_SEED, sample_patients, write_sample_labels
from fmcore.video_files.writers import write_cine, write_video

CLASSES = ("horizontal", "vertical")
LABELLED_VIDEOS = 256  # one per patient: 128 train, 64 val, 64 test
LABELLED_SHAPE = (48, 64, 64)  # frames, height, width
FPS = 25.0
SPEED = (1.0, 2.5)  # pixels per frame at 64 px, of the scene and of each shape
TEXTURE_CUTOFF = 0.08  # cycles per pixel: the texture's grain, a few pixels across
RADIUS = (0.08, 0.15)  # of the frame's side
PLAIN_FILES = (  # name, codec, pixel format: every container the domain reads
    ("clip_h264.mp4", "libx264", "yuv420p"),
    ("clip_h265.mkv", "libx265", "yuv420p"),
    ("clip_vp9.webm", "libvpx-vp9", "yuv420p"),
    ("clip_vp8.webm", "libvpx", "yuv420p"),
    ("clip_mjpeg.avi", "mjpeg", "yuvj420p"),
    ("clip_h264.mov", "libx264", "yuv420p"),
)
PLAIN_SHAPE = (72, 128, 160)  # enough frames for 16 at a sampling rate of 4


def periodic_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random colour texture (H, W, 3) in [0, 1] that tiles seamlessly (low-pass filtered
    noise, periodic by construction), so it can be panned with a roll."""
    noise = rng.normal(size=(3, height, width))
    frequency = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :])
    gain = np.exp(-0.5 * (frequency / TEXTURE_CUTOFF) ** 2)
    texture = np.real(np.fft.ifft2(np.fft.fft2(noise) * gain))
    texture = texture / texture.std() * 0.15 + rng.uniform(0.3, 0.7, (3, 1, 1))
    return np.clip(texture, 0, 1).transpose(1, 2, 0)


def moving_shapes(rng: np.random.Generator, motion: str, shape: tuple[int, int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a textured scene panning ``horizontal``ly or
    ``vertical``ly, with one or two shapes moving along the same axis at their own speeds and
    bouncing off the edges."""
    frames, height, width = shape
    scene = periodic_texture(rng, height, width)
    scale = min(height, width) / 64
    axis = 1 if motion == "horizontal" else 0
    pan = rng.uniform(*SPEED) * scale * rng.choice((-1, 1))
    rows, cols = np.mgrid[0:height, 0:width]
    objects = []
    for _ in range(rng.integers(1, 3)):
        radius = rng.uniform(*RADIUS) * min(height, width)
        centre = rng.uniform(radius, (height - radius, width - radius))
        speed = rng.uniform(*SPEED) * scale * rng.choice((-1, 1))
        colour = rng.uniform(0, 1, 3)
        objects.append((radius, centre, speed, colour, rng.uniform() < 0.5))
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        picture = np.roll(scene, round(pan * t), axis=axis)
        for radius, centre, speed, colour, is_disc in objects:
            low, high = radius, (height, width)[axis] - radius
            position = centre.copy()
            position[axis] = _bounce(centre[axis] + speed * t, low, high)
            dy, dx = rows - position[0], cols - position[1]
            inside = (
                dy**2 + dx**2 <= radius**2 if is_disc else np.maximum(abs(dy), abs(dx)) <= radius
            )
            picture[inside] = colour
        video[t] = np.round(picture * 255)
    return video


def _bounce(x: float, low: float, high: float) -> float:
    """``x`` reflected back and forth between ``low`` and ``high``."""
    span = high - low
    phase = (x - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


def write_labelled_videos(directory: Path, videos: int = LABELLED_VIDEOS) -> list[Path]:
    """The labelled sample's H.264 MP4 files and ``labels.csv`` (path,label,split,patient)."""
    paths, rows = [], []
    for number, (patient, label, split) in enumerate(sample_patients(videos, CLASSES)):
        path = directory / f"{patient}.mp4"
        rng = np.random.default_rng([SAMPLE_SEED, number])
        write_video(path, moving_shapes(rng, label, LABELLED_SHAPE), FPS)
        paths.append(path)
        rows.append((path.name, label, split, patient))
    write_sample_labels(directory, ("path", "label", "split", "patient"), rows)
    return paths


def write_sample_videos(directory: Path) -> list[Path]:
    """The plain sample: a clip in each container and codec of ``PLAIN_FILES`` and a greyscale
    ultrasound-like DICOM cine loop."""
    paths = []
    for number, (name, codec, pixel_format) in enumerate(PLAIN_FILES):
        rng = np.random.default_rng([SAMPLE_SEED, 1000 + number])
        frames = moving_shapes(rng, CLASSES[number % 2], PLAIN_SHAPE)
        write_video(directory / name, frames, FPS, codec, pixel_format)
        paths.append(directory / name)
    rng = np.random.default_rng([SAMPLE_SEED, 2000])
    cine = moving_shapes(rng, "vertical", PLAIN_SHAPE).mean(axis=-1).astype(np.uint8)
    write_cine(directory / "cine.dcm", cine, frame_time_ms=1000 / FPS, name="cine")
    paths.append(directory / "cine.dcm")
    return paths
