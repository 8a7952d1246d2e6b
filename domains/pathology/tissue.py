"""Tissue detection on a low-resolution view of a slide, and an overlay PNG to check it.

Stained tissue is coloured; glass, background and most artefacts are not. So the mask is a
threshold on HSV saturation (Otsu's, which adapts to faint or strong staining, floored so a blank
slide does not split its noise in two), minus very dark pixels (slide edges, black ink) and
optionally pen ink, cleaned with morphology whose sizes are given in microns so the mask
resolution can change without retuning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("otsu", "fixed")
#: Marker-pen inks (green to blue) fall in this hue band (degrees); H&E at mask resolution stays
#: in the purple-pink band (hematoxylin ~255 deg, eosin ~320 deg). Red ink cannot be told from
#: eosin by colour and is not removed.
PEN_HUES = (70.0, 235.0)
PEN_MIN_SATURATION = 0.3


@dataclass(frozen=True)
class TissueOptions:
    """How tissue is found (``data.tissue``). Sizes are physical, so they hold at any ``mpp``."""

    mpp: float = 8.0  # microns per mask pixel (8: a 224-px tile at 0.5 mpp spans 14 pixels)
    method: str = "otsu"  # otsu: Otsu's threshold on saturation; fixed: min_saturation only
    min_saturation: float = 0.07  # floor of the threshold (and the threshold of "fixed")
    min_value: float = 0.15  # darker pixels are not tissue: slide borders, black ink, dust
    remove_pen: bool = True  # green/blue marker ink is not tissue
    smooth_um: float = 16.0  # radius of the closing and opening that smooth the mask
    min_area_um2: float = 10_000.0  # smaller tissue pieces are dropped (a 0.5-mpp tile: 12,544)
    max_hole_um2: float = 2_000.0  # smaller holes inside tissue are filled

    @classmethod
    def from_config(cls, values: dict[str, Any] | None) -> TissueOptions:
        """Options from ``data.tissue`` (``save_masks`` is the domain's, not the detector's)."""
        values = {k: v for k, v in (values or {}).items() if k != "save_masks"}
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise KeyError(
                f"unknown data.tissue option(s) {sorted(unknown)}; valid: {sorted(known)}"
                " and save_masks"
            )
        options = cls(**values)
        if options.method not in METHODS:
            raise ValueError(
                f"data.tissue.method must be one of {', '.join(METHODS)}, not '{options.method}'"
            )
        if not options.mpp > 0:
            raise ValueError(f"data.tissue.mpp must be positive, not {options.mpp}")
        return options


def hsv_saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value in [0, 1] of (h, w, 3) uint8 pixels."""
    pixels = rgb.astype(np.float32) / 255.0
    high = pixels.max(axis=-1)
    low = pixels.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    return saturation, high


def hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) of (h, w, 3) uint8 pixels (0 where the pixel is grey)."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    high = np.maximum(np.maximum(r, g), b)
    spread = np.maximum(high - np.minimum(np.minimum(r, g), b), 1e-6)
    hue = np.where(
        high == r,
        ((g - b) / spread) % 6,
        np.where(high == g, (b - r) / spread + 2, (r - g) / spread + 4),
    )
    return hue * 60.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising the between-class variance."""
    histogram, edges = np.histogram(values.ravel(), bins=bins, range=(0.0, 1.0))
    weights = histogram.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(weights)  # pixels at or below each bin
    above = below[-1] - below
    sum_below = np.cumsum(weights * centres)
    mean_below = sum_below / np.maximum(below, 1)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(above, 1)
    between = below * above * (mean_below - mean_above) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of green or blue marker ink (see ``PEN_HUES``)."""
    saturation, _ = hsv_saturation_value(rgb)
    hue = hue_degrees(rgb)
    return (hue >= PEN_HUES[0]) & (hue <= PEN_HUES[1]) & (saturation >= PEN_MIN_SATURATION)


def _disk(radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def _remove_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def tissue_mask(rgb: np.ndarray, options: TissueOptions) -> np.ndarray:
    """Boolean tissue mask of (h, w, 3) uint8 pixels taken at ``options.mpp`` microns/pixel."""
    from scipy import ndimage

    saturation, value = hsv_saturation_value(rgb)
    threshold = options.min_saturation
    if options.method == "otsu":
        threshold = max(threshold, otsu_threshold(saturation))
    mask = (saturation >= threshold) & (value >= options.min_value)
    if options.remove_pen:
        mask &= ~pen_mask(rgb)

    radius = round(options.smooth_um / options.mpp)
    if radius >= 1:
        disk = _disk(radius)
        mask = ndimage.binary_closing(mask, structure=disk, border_value=0)
        mask = ndimage.binary_opening(mask, structure=disk, border_value=0)
    pixel_area = options.mpp**2
    holes = ~mask & ndimage.binary_fill_holes(mask)
    small_holes = holes & ~_remove_small(holes, options.max_hole_um2 / pixel_area)
    mask = mask | small_holes
    return _remove_small(mask, options.min_area_um2 / pixel_area)


def tissue_overlay(
    rgb: np.ndarray, mask: np.ndarray, boxes: Iterable[tuple[float, float, float, float]] = ()
) -> np.ndarray:
    """A picture of what was kept: background faded, tissue outlined, kept tiles boxed.

    ``boxes`` are (x0, y0, x1, y1) in mask pixels. Returns (h, w, 3) uint8.
    """
    from PIL import Image, ImageDraw
    from scipy import ndimage

    faded = rgb.astype(np.float32) * 0.35 + 255 * 0.65
    picture = np.where(mask[..., None], rgb.astype(np.float32), faded)
    outline = mask & ~ndimage.binary_erosion(mask, border_value=0)
    picture[outline] = (0, 170, 60)
    image = Image.fromarray(np.round(picture).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(30, 90, 230))
    return np.asarray(image)


def save_overlay(path: Path, picture: np.ndarray) -> None:
    """Write an overlay PNG atomically (a reader never sees half a file)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    Image.fromarray(picture).save(partial, format="PNG")
    partial.replace(path)
