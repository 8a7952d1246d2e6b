"""Reading OCT volumes: DICOM Ophthalmic Tomography, multi-page TIFF stacks, folders of B-scan
PNGs, NumPy arrays and Heidelberg Spectralis ``.vol`` files (through eyepy).

Every reader gives the same :class:`OctVolume`: B-scans stacked as (B-scans, axial, lateral),
the spacing in millimetres along those axes when the file records it, and the eye. Indexing
reads headers only (:func:`check_oct`: the B-scan count and size, and sizes that agree); a
B-scan can be read alone where the format allows it, so ``data.oct_unit=bscan`` does not decode
whole volumes per sample.
"""

from __future__ import annotations

import functools
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmcore.domains.ophthalmology.photographs import (
    MIN_SIDE,
    SIXTEEN_BIT_MODES,
    UnusableInput,
    dicom_eye,
    dicom_image_header,
    to_unit,
)
from fmcore.file_checks import is_dicom

VOL_HEADER = struct.Struct("<12s3I3d2I2dId4s")  # Heidelberg .vol file header, first fields
VOL_EYES = {"OD": "R", "OS": "L"}


@dataclass(frozen=True)
class OctHeader:
    """What indexing learns of one OCT input: its reader, B-scan count and the eye."""

    reader: str  # dicom, tiff, png_folder, npy, heyex_vol
    bscans: int
    eye: str


@dataclass(frozen=True)
class OctVolume:
    values: np.ndarray  # (B-scans, axial, lateral) float32: integers by their bit depth to
    # [0, 1], floats as stored (the preprocessing's percentiles map both)
    spacing: tuple[float, float, float] | None  # mm between B-scans, axial and lateral pixels
    eye: str


def oct_inputs(files: list[Path]) -> list[tuple[Path, str]]:
    """The OCT inputs among ``files``: (path, reader); PNGs count once, as their folder."""
    inputs: list[tuple[Path, str]] = []
    folders: set[Path] = set()
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".png":
            if path.parent not in folders:
                folders.add(path.parent)
                inputs.append((path.parent, "png_folder"))
        elif suffix in (".tif", ".tiff"):
            inputs.append((path, "tiff"))
        elif suffix == ".npy":
            inputs.append((path, "npy"))
        elif suffix == ".vol":
            inputs.append((path, "heyex_vol"))
        elif is_dicom(path):
            inputs.append((path, "dicom"))
    return inputs


def check_oct(path: Path, reader: str) -> OctHeader:
    """Header checks; :class:`UnusableInput` with the reason."""
    checks = {
        "dicom": _check_dicom,
        "tiff": _check_tiff,
        "png_folder": _check_png_folder,
        "npy": _check_npy,
        "heyex_vol": _check_vol,
    }
    count, size, eye = checks[reader](path)
    if min(size) < MIN_SIDE:
        raise UnusableInput(f"B-scans of {size[1]}x{size[0]} pixels: too small for OCT")
    return OctHeader(reader, count, eye)


def _check_dicom(path: Path) -> tuple[int, tuple[int, int], str]:
    ds = dicom_image_header(path)
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        raise UnusableInput("a colour DICOM image where greyscale OCT B-scans are expected")
    return int(ds.get("NumberOfFrames") or 1), (int(ds.Rows), int(ds.Columns)), dicom_eye(ds)


def _check_tiff(path: Path) -> tuple[int, tuple[int, int], str]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            shapes = [(int(p.imagelength), int(p.imagewidth)) for p in tiff.pages]
    except (tifffile.TiffFileError, ValueError, OSError) as error:
        raise UnusableInput(f"not a readable TIFF: {error}") from error
    return len(shapes), _one_size(shapes, [f"page {i}" for i in range(len(shapes))]), ""


def _check_png_folder(folder: Path) -> tuple[int, tuple[int, int], str]:
    from PIL import Image, UnidentifiedImageError

    pngs = bscan_pngs(folder)
    shapes = []
    for png in pngs:
        try:
            with Image.open(png) as image:
                shapes.append(image.size[::-1])
        except UnidentifiedImageError as error:
            raise UnusableInput(f"{png.name} is not an image Pillow can read") from error
    return len(pngs), _one_size(shapes, [p.name for p in pngs]), ""


def _check_npy(path: Path) -> tuple[int, tuple[int, int], str]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise UnusableInput(f"not a readable NumPy array: {error}") from error
    if array.ndim not in (2, 3):
        raise UnusableInput(f"an array of shape {array.shape}: OCT is (B-scans, axial, lateral)")
    shape = array.shape if array.ndim == 3 else (1, *array.shape)
    return shape[0], shape[1:], ""


def _check_vol(path: Path) -> tuple[int, tuple[int, int], str]:
    with open(path, "rb") as handle:
        head = handle.read(VOL_HEADER.size)
    if len(head) < VOL_HEADER.size:
        raise UnusableInput("truncated Heidelberg .vol: shorter than its header")
    fields = VOL_HEADER.unpack(head)
    lateral, count, axial = fields[1:4]
    eye = VOL_EYES.get(fields[-1].split(b"\x00")[0].decode("ascii", "replace"), "")
    return count, (axial, lateral), eye


def _one_size(shapes: list[tuple[int, int]], names: list[str]) -> tuple[int, int]:
    """The B-scan size every entry shares; :class:`UnusableInput` naming the first that
    differs."""
    if not shapes:
        raise UnusableInput("no B-scans")
    for shape, name in zip(shapes, names, strict=True):
        if shape != shapes[0]:
            raise UnusableInput(
                f"inconsistent B-scan sizes: {name} is {shape[1]}x{shape[0]},"
                f" the first {shapes[0][1]}x{shapes[0][0]}"
            )
    return shapes[0]


def bscan_pngs(folder: Path) -> list[Path]:
    """A folder's PNG B-scans in natural order (bscan_2 before bscan_10)."""
    pngs = [p for p in folder.glob("*.png") if not p.name.startswith(".")]
    return sorted(
        pngs, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]
    )


def read_oct(path: str, reader: str, bscan: int | None = None) -> OctVolume:
    """The volume at ``path``, or with ``bscan`` only that B-scan (a volume of one)."""
    readers = {
        "dicom": _read_dicom,
        "tiff": _read_tiff,
        "png_folder": _read_png_folder,
        "npy": _read_npy,
        "heyex_vol": _read_vol,
    }
    return readers[reader](path, bscan)


def _read_dicom(path: str, bscan: int | None) -> OctVolume:
    import pydicom
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    pixels = pixel_array(path) if bscan is None else pixel_array(path, index=bscan)
    if pixels.ndim == 2:
        pixels = pixels[None]
    values = pixels.astype(np.float32) / float(2 ** int(ds.get("BitsStored") or 8) - 1)
    return OctVolume(np.clip(values, 0, 1), dicom_spacing(ds), dicom_eye(ds))


def dicom_spacing(ds: object) -> tuple[float, float, float] | None:
    """(between B-scans, axial, lateral) mm from the shared functional groups' Pixel Measures
    (PixelSpacing = row, column spacing; SpacingBetweenSlices or SliceThickness), or from the
    top-level attributes of a file without functional groups."""
    source = ds
    shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
    if shared and "PixelMeasuresSequence" in shared[0]:
        source = shared[0].PixelMeasuresSequence[0]
    pixel = getattr(source, "PixelSpacing", None)
    between = getattr(source, "SpacingBetweenSlices", None) or getattr(
        source, "SliceThickness", None
    )
    if pixel is None or between is None:
        return None
    return float(between), float(pixel[0]), float(pixel[1])


def _read_tiff(path: str, bscan: int | None) -> OctVolume:
    import tifffile

    pixels = tifffile.imread(path, key=bscan if bscan is not None else None)
    return OctVolume(_stack(to_unit(pixels)), None, "")


def _read_png_folder(path: str, bscan: int | None) -> OctVolume:
    from PIL import Image

    pngs = bscan_pngs(Path(path))
    chosen = pngs if bscan is None else [pngs[bscan]]
    planes = []
    for png in chosen:
        with Image.open(png) as image:
            if image.mode in SIXTEEN_BIT_MODES:
                planes.append(np.asarray(image, dtype=np.float32) / 65535.0)
            else:
                planes.append(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
    return OctVolume(np.stack(planes), None, "")


def _read_npy(path: str, bscan: int | None) -> OctVolume:
    array = _stack(np.load(path, mmap_mode="r", allow_pickle=False))
    chosen = np.asarray(array if bscan is None else array[bscan : bscan + 1])
    if np.issubdtype(chosen.dtype, np.integer):
        return OctVolume(to_unit(chosen), None, "")
    return OctVolume(chosen.astype(np.float32), None, "")  # the percentiles scale it


def _read_vol(path: str, bscan: int | None) -> OctVolume:
    stat = os.stat(path)
    volume = _decoded_vol(path, stat.st_size, stat.st_mtime_ns)
    if bscan is None:
        return volume
    return OctVolume(volume.values[bscan : bscan + 1], volume.spacing, volume.eye)


@functools.lru_cache(maxsize=2)
def _decoded_vol(path: str, size: int, mtime_ns: int) -> OctVolume:
    """A whole .vol decoded once per process (eyepy reads the file whole), so the B-scan
    samples of one volume (``data.oct_unit=bscan``) do not decode it once each; keyed by size
    and modification time, so a rewritten file is read again."""
    import eyepy

    volume = eyepy.import_heyex_vol(path)
    meta = volume.meta
    spacing = (float(meta["scale_z"]), float(meta["scale_y"]), float(meta["scale_x"]))
    eye = VOL_EYES.get(str(meta["laterality"]), "")
    return OctVolume(to_unit(np.asarray(volume.data)), spacing, eye)


def _stack(values: np.ndarray) -> np.ndarray:
    if values.ndim == 2:
        return values[None]
    if values.ndim != 3:
        raise ValueError(f"pixel data of shape {values.shape} is not a stack of B-scans")
    return values
