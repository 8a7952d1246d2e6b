"""Reading one fundus photograph: Pillow (JPEG, PNG), tifffile (TIFF, 8 or 16 bits) or pydicom
(Ophthalmic Photography and other single-frame DICOM images).

Indexing checks headers only (:func:`check_photograph`): the format, the size, a complete file,
pixel data present. Loading decodes to an (H, W, 3) float32 image in [0, 1] oriented as the
file says (EXIF or TIFF orientation), with the eye the file names (DICOM laterality).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fmcore.domains.ophthalmology.refs import EyeRef
from fmcore.errors import BadSample
from fmcore.file_checks import is_dicom, truncation

if TYPE_CHECKING:
    from pydicom import Dataset

PIL_FORMATS = ("JPEG", "PNG")
TIFF_EXTENSIONS = (".tif", ".tiff")
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", *TIFF_EXTENSIONS)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # Pillow's 16-bit greyscale modes
EXIF_ORIENTATION = 0x0112
MIN_SIDE = 32  # pixels: anything smaller is not a fundus photograph
EYES = ("L", "R")
EYE_NAMES = {"L": "L", "R": "R", "OS": "L", "OD": "R", "LEFT": "L", "RIGHT": "R"}
# TIFF/EXIF orientation 1-8 -> (quarter turns counter-clockwise, then mirror left-right)
ORIENTATIONS = {1: (0, False), 2: (0, True), 3: (2, False), 4: (2, True),
                5: (3, True), 6: (3, False), 7: (1, True), 8: (1, False)}  # fmt: skip


class UnusableInput(ValueError):
    """An input the domain cannot use: not a readable photograph or OCT volume (the reason is
    the message)."""


@dataclass(frozen=True)
class Photograph:
    # (H, W, 3): uint8 as decoded from 8-bit files (kept so until the sample is small), or
    # float32 in [0, 1] from deeper ones
    rgb: np.ndarray
    eye: str  # from the file (DICOM laterality), else empty


def reader_for(path: Path) -> str | None:
    """Which reader a file under ``data.root`` takes, or None for files the domain ignores."""
    suffix = path.suffix.lower()
    if suffix in TIFF_EXTENSIONS:
        return "tiff"
    if suffix in PHOTO_EXTENSIONS:
        return "pil"
    return "dicom" if is_dicom(path) else None


def check_photograph(path: Path, reader: str) -> str:
    """The eye a file names ('' when it names none) after checking its header; raises
    :class:`UnusableInput` with the reason for a file that cannot be used."""
    if reader == "dicom":
        return _check_dicom(path)
    size = _check_tiff(path) if reader == "tiff" else _check_pil(path)
    if min(size) < MIN_SIDE:
        raise UnusableInput(
            f"{size[1]}x{size[0]} pixels: too small for a fundus photograph"
            f" (at least {MIN_SIDE} a side)"
        )
    return ""


def _check_pil(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image_format, (width, height) = image.format, image.size
    except UnidentifiedImageError as error:
        raise UnusableInput("not an image Pillow can read") from error
    if image_format not in PIL_FORMATS:
        raise UnusableInput(f"a {image_format} file named {path.suffix}")
    problem = truncation(path, image_format)
    if problem:
        raise UnusableInput(problem)
    return height, width


def _check_tiff(path: Path) -> tuple[int, int]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages.first
            return int(page.imagelength), int(page.imagewidth)
    except (tifffile.TiffFileError, ValueError, OSError) as error:
        raise UnusableInput(f"not a readable TIFF: {error}") from error


def dicom_image_header(path: Path) -> Dataset:
    """The header of a DICOM image (pixel data deferred, not read); :class:`UnusableInput`
    for a file pydicom cannot read or an object without pixel data."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")
    except Exception as error:  # not DICOM, truncated header
        raise UnusableInput(f"cannot read DICOM: {type(error).__name__}: {error}") from error
    if "PixelData" not in ds:
        raise UnusableInput("a DICOM object without pixel data (no image)")
    return ds


def _check_dicom(path: Path) -> str:
    ds = dicom_image_header(path)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise UnusableInput(
            f"{frames} frames (an OCT volume or a series) where one photograph is expected"
        )
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if min(rows, columns) < MIN_SIDE:
        raise UnusableInput(f"{columns}x{rows} pixels: too small for a fundus photograph")
    return dicom_eye(ds)


def dicom_eye(ds: object) -> str:
    """L or R from Image Laterality (0020,0062) or Laterality (0020,0060), else ''."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(getattr(ds, keyword, "") or "").strip().upper()
        if value in EYES:
            return value
    return ""


def read_photograph(ref: EyeRef, draft_side: int) -> Photograph:
    """Decode ``ref`` (JPEG at a reduced scale of at least ``draft_side`` pixels a side, which
    libjpeg does faster than a full decode); :class:`BadSample` naming the file if it fails."""
    try:
        if ref.reader == "dicom":
            return _read_dicom(ref.path)
        rgb = _read_tiff(ref.path) if ref.reader == "tiff" else _read_pil(ref.path, draft_side)
    except BadSample:
        raise
    except Exception as error:  # corrupt image data found only when decoding
        raise BadSample(ref.path, f"cannot decode: {type(error).__name__}: {error}") from error
    return Photograph(rgb, ref.eye)


def _read_pil(path: str, draft_side: int) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (draft_side, draft_side))
        # Both return copies even when nothing changes: a full-size copy each, so only on need.
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in SIXTEEN_BIT_MODES:
            return as_rgb(np.asarray(image, dtype=np.float32) / 65535.0)
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _read_tiff(path: str) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages.first
        pixels = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and pixels.ndim == 3:
            pixels = np.moveaxis(pixels, 0, -1)  # colour planes stored one after another
        orientation = page.tags.get("Orientation")
        code = int(orientation.value) if orientation is not None else 1
    return as_rgb(orient(pixels if pixels.dtype == np.uint8 else to_unit(pixels), code))


def _read_dicom(path: str) -> Photograph:
    import pydicom

    ds = pydicom.dcmread(path)
    try:
        pixels = ds.pixel_array  # pydicom converts YBR colour to RGB
    except Exception as error:
        raise BadSample(path, f"cannot decode DICOM pixels: {error}") from error
    bits = int(ds.get("BitsStored") or pixels.dtype.itemsize * 8)
    inverted = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if pixels.dtype == np.uint8 and bits == 8:
        values = 255 - pixels if inverted else pixels
    else:
        values = np.clip(pixels.astype(np.float32) / float(2**bits - 1), 0, 1)
        values = 1.0 - values if inverted else values
    return Photograph(as_rgb(values), dicom_eye(ds))


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """Integer pixels by their type's range (8 or 16 bits), float pixels clipped, to [0, 1]."""
    if np.issubdtype(pixels.dtype, np.integer):
        return pixels.astype(np.float32) / float(np.iinfo(pixels.dtype).max)
    return np.clip(pixels.astype(np.float32), 0, 1)


def as_rgb(values: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, C) with 1, 3 or 4 channels -> (H, W, 3); alpha is dropped."""
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or values.shape[2] not in (1, 3, 4):
        raise ValueError(f"pixel data of shape {values.shape} is not a 2D photograph")
    if values.shape[2] == 1:
        return np.repeat(values, 3, axis=2)
    return np.ascontiguousarray(values[..., :3])


def orient(pixels: np.ndarray, code: int) -> np.ndarray:
    """Pixels as displayed under TIFF/EXIF orientation ``code`` (1 is as stored)."""
    turns, mirror = ORIENTATIONS.get(code, (0, False))
    pixels = np.rot90(pixels, turns)
    return pixels[:, ::-1] if mirror else pixels
