"""The embedded sample: small synthetic H&E slides written as real pyramidal tiled TIFFs.

So ``fmcore train domain=pathology`` runs on a fresh machine, the domain writes slides that go
through the same OpenSlide path as a scanner's: a generic tiled TIFF, JPEG tiles, one page per
pyramid level, and the resolution in centimetres (OpenSlide turns it into ``openslide.mpp-x``).

The picture is composed as a stained section is: haematoxylin and eosin amounts per pixel
(nuclei, fibrous stroma, lumina), turned into colour by Beer-Lambert with the Ruifrok-Johnston
stain vectors, on white glass, with a blue marker-pen line beside the tissue as real slides
often have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmcore.domains.pathology.stain import RGB_FROM_HED

SAMPLE_SLIDES = 2
SAMPLE_SIZE = 3072  # level-0 pixels per side: 768 um at 0.25 mpp, 6 x 6 tiles of 224 px at 0.5
SAMPLE_MPP = 0.25  # a 40x scan
SAMPLE_SEED = 20261123
TIFF_TILE = 256


def pyramid(level0: np.ndarray, smallest: int = TIFF_TILE) -> list[np.ndarray]:
    """Level 0 and successive 2x area-averaged levels until one fits in ``smallest`` pixels."""
    levels = [level0]
    while max(levels[-1].shape[:2]) > smallest:
        image = levels[-1].astype(np.float32)
        height, width = image.shape[:2]
        image = image[: height - height % 2, : width - width % 2]  # a trailing odd row/column
        halved = image.reshape(height // 2, 2, width // 2, 2, -1).mean(axis=(1, 3))
        levels.append(np.round(halved).astype(np.uint8))
    return levels


def write_pyramidal_tiff(
    path: Path,
    levels: Sequence[np.ndarray],
    mpp: float | None,
    compression: str | None = "jpeg",
    quality: int = 90,
    tile: int = TIFF_TILE,
) -> None:
    """Write ``levels`` (each (h, w, 3) uint8, halving in size) as a tiled TIFF OpenSlide reads.

    ``mpp`` (microns per level-0 pixel) is stored as TIFF resolution in pixels per centimetre,
    scaled per level; None writes no resolution, like a slide whose scanner left it out.
    ``compression`` is "jpeg" (needs imagecodecs, like scanners' files), "zlib" or None
    (lossless, so tests can expect exact pixels).
    """
    import tifffile

    if compression == "jpeg":
        _require_imagecodecs()
    base_width = levels[0].shape[1]
    with tifffile.TiffWriter(path, bigtiff=False) as writer:
        for number, level in enumerate(levels):
            downsample = base_width / level.shape[1]
            options: dict = {}
            if mpp is not None:
                pixels_per_cm = 1e4 / (mpp * downsample)
                options = {
                    "resolution": (pixels_per_cm, pixels_per_cm),
                    "resolutionunit": "CENTIMETER",
                }
            if compression == "jpeg":
                options["compressionargs"] = {"level": quality}
            writer.write(
                np.ascontiguousarray(level),
                tile=(tile, tile),
                compression=compression,
                subfiletype=1 if number else 0,  # 1: a reduced-resolution copy of page 0
                software="fmcore",
                metadata=None,
                **options,
            )


def _require_imagecodecs() -> None:
    import importlib.util

    from fmcore.distribution import extra_install_command
    from fmcore.errors import MissingExtra

    if importlib.util.find_spec("imagecodecs") is None:
        raise MissingExtra(
            "writing the pathology sample slides (JPEG-compressed TIFF)",
            ["imagecodecs"],
            extra_install_command("pathology"),
        )


def write_sample_slides(directory: Path, count: int = SAMPLE_SLIDES) -> list[Path]:
    """Write the embedded sample slides into ``directory``; returns their paths."""
    paths = []
    for number in range(count):
        rng = np.random.default_rng([SAMPLE_SEED, number])
        half = synthetic_section(rng, SAMPLE_SIZE // 2)  # drawn at 0.5 mpp (level 1)
        level0 = _upsample_twice(half, rng)
        levels = [level0, half, *pyramid(half)[1:]]
        path = directory / f"sample_slide_{number + 1}.tif"
        write_pyramidal_tiff(path, levels, SAMPLE_MPP)
        paths.append(path)
    (directory / "README.txt").write_text(
        f"Synthetic H&E slides written by fmcore's pathology domain: generic pyramidal TIFF,\n"
        f"JPEG tiles, {SAMPLE_MPP} microns per pixel at level 0. Safe to delete.\n"
    )
    return paths


def _upsample_twice(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Level 0 from the 0.5-mpp drawing: bilinear 2x, plus sensor-like noise."""
    from PIL import Image

    height, width = image.shape[:2]
    big = np.asarray(
        Image.fromarray(image).resize((width * 2, height * 2), Image.Resampling.BILINEAR)
    )
    noise = rng.integers(-3, 4, size=big.shape[:2], dtype=np.int16)[..., None]
    return np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: random values on a ``cells`` grid, bicubic-upsampled."""
    from PIL import Image

    coarse = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


@dataclass(frozen=True)
class Crowding:
    """A region of crowded nuclei drawn over a section's own: a tumour nest (large, pleomorphic
    nuclei) or a lymphoid aggregate (small, round ones), with less eosin (stroma) inside."""

    cover: float  # share of the tissue the region covers, about
    area_per_nucleus: float  # tissue pixels (at 0.5 mpp) per nucleus inside the region
    major: tuple[float, float]  # range of a nucleus's semi-axes in pixels
    minor: tuple[float, float]
    eosin: float = 0.6  # eosin inside the region, times the stroma's


def synthetic_section(
    rng: np.random.Generator,
    size: int,
    crowding: Sequence[Crowding] = (),
    stain: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """A (size, size, 3) uint8 H&E-like field of view at 0.5 microns per pixel.

    Three to five overlapping tissue pieces with wavy borders cover about half of it; the
    top-right corner stays glass and holds a marker-pen stroke. ``crowding`` adds regions of
    crowded nuclei; ``stain`` scales the haematoxylin and eosin amounts (a lab's staining).
    """
    from PIL import Image

    # Tissue pieces: ellipses whose borders are pushed in and out by smooth noise, drawn at a
    # quarter of the resolution (borders are smooth anyway) and upsampled.
    coarse = size // 4
    y, x = np.mgrid[0:coarse, 0:coarse].astype(np.float32) / coarse
    field = np.full((coarse, coarse), -1.0, np.float32)
    for _ in range(rng.integers(3, 6)):
        cx, cy = rng.uniform(0.2, 0.65), rng.uniform(0.3, 0.75)
        rx, ry = rng.uniform(0.15, 0.3, size=2)
        angle = rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        field = np.maximum(field, 1.0 - np.sqrt((u / rx) ** 2 + (v / ry) ** 2))
    field += 0.25 * _smooth_noise(rng, coarse, 8)
    # Keep the top-right corner glass for the pen mark, fading so no straight edge shows.
    field -= 3.0 * np.clip((x - 0.6) / 0.12, 0, 1) * np.clip((0.4 - y) / 0.12, 0, 1)
    field = np.asarray(Image.fromarray(field).resize((size, size), Image.Resampling.BILINEAR))
    tissue = field > 0

    # Eosin: stroma fibres (waves along a wandering direction, fading in and out) over a
    # patchy base; a faint haematoxylin background.
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi) + 1.5 * _smooth_noise(rng, size, 6)
    waves = np.sin((x * np.cos(theta) + y * np.sin(theta)) / 4.0)
    waves *= np.clip(_smooth_noise(rng, size, 16) + 0.3, 0, 1)
    eosin = 0.38 + 0.12 * _smooth_noise(rng, size, 24) + 0.1 * waves
    haematoxylin = 0.04 + 0.03 * _smooth_noise(rng, size, 32)

    # Lumina and fat: round holes of glass inside the tissue.
    for _ in range(rng.integers(6, 14)):
        cx, cy = rng.uniform(0, size, size=2)
        radius = rng.uniform(0.015, 0.04) * size
        y0, y1 = max(0, int(cy - radius)), min(size, int(cy + radius) + 1)
        x0, x1 = max(0, int(cx - radius)), min(size, int(cx + radius) + 1)
        hole = (x[y0:y1, x0:x1] - cx) ** 2 + (y[y0:y1, x0:x1] - cy) ** 2 < radius**2
        tissue[y0:y1, x0:x1] &= ~hole

    # Nuclei: dark haematoxylin ellipses, 5-9 um across, denser where the noise is high.
    density = np.clip(0.6 + 0.5 * _smooth_noise(rng, size, 5), 0.1, 1.0)
    count = int(tissue.mean() * size * size / 260)
    centres = rng.uniform(0, size, size=(3 * count, 2))
    rows, cols = centres[:, 1].astype(int), centres[:, 0].astype(int)
    accept = tissue[rows, cols] & (rng.uniform(size=len(centres)) < density[rows, cols])
    _stamp_nuclei(haematoxylin, rng, centres[accept][:count])
    for region in crowding:
        _crowd_nuclei(haematoxylin, eosin, tissue, rng, region)
    haematoxylin *= stain[0]
    eosin *= stain[1]

    stain_vectors = np.asarray(RGB_FROM_HED[:2], np.float32)
    density_rgb = (haematoxylin[..., None] * stain_vectors[0]) + (
        eosin[..., None] * stain_vectors[1]
    )
    density_rgb *= tissue[..., None]
    density_rgb += 0.06  # glass
    rgb = np.exp(-density_rgb)

    _draw_pen_stroke(rgb, rng, size)
    noise = rng.integers(-2, 3, size=(size, size, 1), dtype=np.int16)
    return np.clip(np.round(rgb * 255).astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _nucleus_stamps(
    rng: np.random.Generator,
    count: int = 24,
    major: tuple[float, float] = (5.0, 9.0),
    minor: tuple[float, float] = (4.0, 7.0),
) -> np.ndarray:
    """``count`` nucleus shapes (count, s, s): ellipses with semi-axes drawn from ``major`` and
    ``minor`` (by default 8-18 px, 4-9 um, across) with speckled chromatin, stamped many times
    each (cheaper than drawing thousands of nuclei one by one)."""
    reach = int(np.ceil(major[1])) + 1
    yy, xx = np.mgrid[-reach : reach + 1, -reach : reach + 1].astype(np.float32)
    stamps = []
    for _ in range(count):
        radius_a, radius_b = rng.uniform(*major), rng.uniform(*minor)
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        inside = np.clip(1.5 - np.sqrt((u / radius_a) ** 2 + (v / radius_b) ** 2) * 1.5, 0, 1)
        chromatin = rng.uniform(0.7, 1.1) + 0.25 * rng.standard_normal(inside.shape)
        stamps.append(inside * chromatin)
    return np.stack(stamps).astype(np.float32)


def _stamp_nuclei(
    haematoxylin: np.ndarray,
    rng: np.random.Generator,
    centres: np.ndarray,
    stamps: np.ndarray | None = None,
) -> None:
    stamps = _nucleus_stamps(rng) if stamps is None else stamps
    reach = stamps.shape[1] // 2
    padded = np.pad(haematoxylin, reach)
    choice = rng.integers(0, len(stamps), size=len(centres))
    for (cx, cy), k in zip(centres.astype(int), choice, strict=True):
        padded[cy : cy + 2 * reach + 1, cx : cx + 2 * reach + 1] += stamps[k]
    haematoxylin[:] = padded[reach:-reach, reach:-reach]


def _crowd_nuclei(
    haematoxylin: np.ndarray,
    eosin: np.ndarray,
    tissue: np.ndarray,
    rng: np.random.Generator,
    region: Crowding,
) -> None:
    """Stamp ``region``'s nuclei into blobs of smooth noise covering about ``region.cover`` of
    the tissue, and thin the eosin there."""
    size = haematoxylin.shape[0]
    noise = _smooth_noise(rng, size, 6)
    threshold = np.quantile(noise[tissue], 1.0 - region.cover) if tissue.any() else np.inf
    inside = tissue & (noise > threshold)
    eosin[inside] *= region.eosin
    rows, cols = np.nonzero(inside)
    chosen = rng.integers(0, len(rows), size=int(len(rows) / region.area_per_nucleus))
    centres = np.stack([cols[chosen], rows[chosen]], axis=1)  # (x, y), as _stamp_nuclei takes
    stamps = _nucleus_stamps(rng, major=region.major, minor=region.minor)
    _stamp_nuclei(haematoxylin, rng, centres, stamps)


def _draw_pen_stroke(rgb: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """A blue marker line in the top-right glass corner, as pathologists circle regions."""
    ink = np.array([0.12, 0.24, 0.66], np.float32)
    t = np.linspace(0, 1, 50)
    start = np.array([0.78, 0.06]) * size
    end = np.array([0.95, 0.22]) * size
    points = start + (end - start) * t[:, None]
    points[:, 0] += rng.uniform(-0.03, 0.03) * size * np.sin(np.pi * t)
    width = 0.012 * size
    top, bottom, left = int(0.02 * size), int(0.3 * size), int(0.7 * size)
    y, x = np.mgrid[top:bottom, left:size].astype(np.float32)
    near = np.zeros(y.shape, bool)
    for px, py in points:
        near |= (x - px) ** 2 + (y - py) ** 2 < width**2
    rgb[top:bottom, left:size][near] = ink
