"""The dermatology domain: dermoscopy photos (PNG or JPEG, RGB), one folder per class.

``data.root`` is searched recursively. The first folder below the root names the class (class
index by sorted folder name: ``melanoma`` 0, ``nevus`` 1); photos directly in the root are
unlabelled (-1). Hidden files and folders (``.DS_Store``, ``._x.png``) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fmcore.api import BadSample, ConfigError, Domain, NoUsableSamples, Sample

EXTENSIONS = (".png", ".jpg", ".jpeg")

SAMPLE_CLASSES = ("nevus", "melanoma")
SAMPLE_PER_CLASS = 12
SAMPLE_SIZE = 64
SAMPLE_SEED = 20240611

Ref = tuple[str, int]  # (path, label): small and picklable into data-loader workers


class Dermatology(Domain):
    name = "dermatology"
    modality = "image2d"
    requires = ("PIL",)  # imported lazily, so a missing Pillow names the command below
    install = "pip install pillow"

    def find_samples(self, split: str) -> Sequence[Ref]:
        if self.channels != 3:
            raise ConfigError(
                f"dermatology photos are RGB: data.channels must be 3, not {self.channels}"
            )
        root = self.resolve_root()
        if not root.is_dir():
            raise ConfigError(f"data.root={root} is a file: point it at the folder of photos")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
        refs: list[Ref] = []
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if path.suffix.lower() not in EXTENSIONS or any(_hidden(p) for p in relative.parts):
                continue
            if not path.is_file():
                continue
            label = classes.index(relative.parts[0]) if len(relative.parts) > 1 else -1
            refs.append((str(path), label))
        if not refs:
            raise NoUsableSamples(
                f"no photos ({', '.join(EXTENSIONS)}) found under data.root={root}"
            )
        return refs

    def load(self, ref: Ref) -> Sample:
        from PIL import Image, ImageOps

        path, label = ref
        height, width = self.sample_size
        try:
            with Image.open(path) as image:
                image.draft("RGB", (width, height))  # JPEG: decode at a reduced scale, much faster
                rgb = ImageOps.exif_transpose(image).convert("RGB")
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
        # UnidentifiedImageError (not an image) and truncated files are OSErrors; broken PNG
        # chunks raise SyntaxError; oversized images DecompressionBombError.
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise BadSample(
                path, f"cannot decode photo: {type(error).__name__}: {error}"
            ) from error
        # uint8, as stored: the device makes the floats (fmcore's transport rule).
        pixels = torch.from_numpy(np.array(rgb))
        return Sample(data=pixels.permute(2, 0, 1), label=label, meta={"path": path})

    def write_sample_data(self, directory: Path) -> None:
        """24 synthetic 64x64 dermoscopy-like PNGs: ``nevus/`` and ``melanoma/``, 12 each."""
        from PIL import Image

        for label, name in enumerate(SAMPLE_CLASSES):
            (directory / name).mkdir(parents=True, exist_ok=True)
            for i in range(SAMPLE_PER_CLASS):
                rng = np.random.default_rng([SAMPLE_SEED, label, i])
                pixels = synthetic_lesion(rng, melanoma=name == "melanoma", size=SAMPLE_SIZE)
                Image.fromarray(pixels).save(directory / name / f"{name}_{i:03d}.png")


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _smooth_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, waves: int) -> np.ndarray:
    """A smooth random field in about [-1, 1]: a sum of low-frequency plane waves."""
    field = np.zeros_like(x)
    for _ in range(waves):
        fx, fy = rng.normal(0.0, 2.5, size=2)
        field += np.cos(fx * x + fy * y + rng.uniform(0, 2 * np.pi))
    return field / np.sqrt(waves)


def synthetic_lesion(rng: np.random.Generator, melanoma: bool, size: int = 64) -> np.ndarray:
    """One dermoscopy-like photo, (size, size, 3) uint8.

    Skin-coloured background under a circular dermoscope field, a pigmented lesion and a few hairs.
    A nevus is small, near-symmetric, evenly brown with a soft border; a melanoma is larger,
    asymmetric, with an irregular border and several colours (dark brown, black, blue-grey, red).
    """
    coords = np.linspace(-1.0, 1.0, size)
    y, x = np.meshgrid(coords, coords, indexing="ij")

    # Skin: a tone between light and medium, gentle shading, fine texture, dark dermoscope corners.
    tone = np.array([0.90, 0.72, 0.60]) * rng.uniform(0.8, 1.05) + rng.normal(0, 0.02, 3)
    shading = 1.0 + 0.06 * _smooth_field(rng, x, y, 3)
    image = tone * shading[..., None] + rng.normal(0, 0.015, (size, size, 3))

    # Lesion boundary in polar coordinates: radius(angle) = base * (1 + sum of harmonics).
    cx, cy = rng.normal(0, 0.08, size=2)
    radius = np.hypot(x - cx, y - cy)
    angle = np.arctan2(y - cy, x - cx)
    if melanoma:
        base, harmonics, amplitude, edge = rng.uniform(0.42, 0.6), range(1, 10), (0.08, 0.22), 0.025
    else:
        base, harmonics, amplitude, edge = rng.uniform(0.28, 0.40), range(2, 4), (0.01, 0.05), 0.045
    boundary = np.full_like(angle, 1.0)
    for k in harmonics:  # rougher harmonics are weaker: lobes and notches, not a star
        strength = rng.uniform(*amplitude) / k**0.8
        boundary += strength * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    mask = 1.0 / (1.0 + np.exp(-(base * boundary - radius) / edge))

    if melanoma:
        # Light brown, dark brown, black, blue-grey, red; browns dominate, the rest in patches.
        palette = np.array(
            [
                [0.55, 0.38, 0.26],
                [0.32, 0.19, 0.12],
                [0.10, 0.07, 0.07],
                [0.38, 0.42, 0.52],
                [0.62, 0.26, 0.24],
            ]
        )
        bias = np.array([0.8, 0.8, 0.0, -0.5, -0.8])
        fields = [2.2 * _smooth_field(rng, x, y, 4) for _ in palette]
        weights = np.exp(np.stack(fields, -1) + bias)
        lesion = (weights / weights.sum(-1, keepdims=True)) @ palette
    else:
        brown = np.array([0.50, 0.33, 0.22]) * rng.uniform(0.75, 1.1)
        darker_centre = 1.0 - 0.25 * np.exp(-((radius / (0.6 * base)) ** 2))
        lesion = brown * darker_centre[..., None]
    lesion = lesion + rng.normal(0, 0.02, (size, size, 3))
    image = image * (1 - mask[..., None]) + lesion * mask[..., None]

    # Hairs: dark quadratic curves from edge to edge, drawn as dense dots.
    for _ in range(rng.integers(0, 4)):
        start, middle, end = rng.uniform(-1.1, 1.1, size=(3, 2))
        t = np.linspace(0.0, 1.0, 4 * size)[:, None]
        points = (1 - t) ** 2 * start + 2 * (1 - t) * t * middle + t**2 * end
        columns, rows = np.round((points + 1) / 2 * (size - 1)).astype(int).T
        inside = (rows >= 0) & (rows < size) & (columns >= 0) & (columns < size)
        image[rows[inside], columns[inside]] = image[rows[inside], columns[inside]] * 0.3 + 0.05

    vignette = np.clip(1.25 - np.hypot(x, y) ** 4 * 0.55, 0.15, 1.0)
    image = image * vignette[..., None]
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
