"""Greyscale PNG radiographs, 8 or 16 bits per pixel, read with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmcore.domains.radiology.radiograph import Radiograph
from fmcore.errors import BadSample
from fmcore.file_checks import truncation

GREY_MODES = ("L", "I;16", "I;16B", "I")  # Pillow's modes for 8- and 16-bit greyscale PNG


def check_png(path: Path) -> None:
    """ValueError unless ``path`` is a complete greyscale PNG (header and last chunk only)."""
    from PIL import Image

    with Image.open(path) as image:
        kind, mode = image.format, image.mode
    if kind != "PNG":
        raise ValueError(f"a {kind} file named .png")
    if mode not in GREY_MODES:
        raise ValueError(f"a {mode} PNG where a greyscale radiograph (8 or 16 bit) is expected")
    problem = truncation(path, "PNG")
    if problem:
        raise ValueError(problem)


def read_png(path: str) -> Radiograph:
    from PIL import Image

    try:
        with Image.open(path) as image:
            values = np.asarray(image, dtype=np.float64)
    except Exception as error:  # corrupt image data
        raise BadSample(path, f"cannot decode PNG: {error}") from error
    if values.ndim != 2:
        raise BadSample(path, f"pixel data of shape {values.shape} where one 2D image is expected")
    return Radiograph(values, inverted=False, display_range=None)
