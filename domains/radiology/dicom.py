"""Reading DICOM: headers when indexing (grouping, non-image objects), pixels when loading.

Headers are read without pixel data so indexing a large archive stays cheap; pixel data is only
decoded by ``read_series`` in the data-loader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fmcore.domains.radiology.geometry import SliceGeometry, order_and_check
from fmcore.errors import BadSample

if TYPE_CHECKING:
    from pydicom import Dataset

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}
IMAGE_TAGS = ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


class NotAnImage(ValueError):
    """A DICOM object without image geometry (RTSTRUCT, SR, RTPLAN, ...)."""


@dataclass(frozen=True)
class SliceHeader:
    path: str
    series_uid: str
    geometry: SliceGeometry


def read_header(path: Path) -> SliceHeader:
    """The geometry of one image slice; :class:`NotAnImage` for non-image objects, pydicom's
    errors for unreadable files."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    require_tags(ds, IMAGE_TAGS)
    if frames(ds) > 1:
        raise NotAnImage("multi-frame DICOM is not supported yet")
    thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0
    geometry = SliceGeometry(
        position=tuple(float(v) for v in ds.ImagePositionPatient),
        orientation=tuple(float(v) for v in ds.ImageOrientationPatient),
        pixel_spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
        shape=(int(ds.Rows), int(ds.Columns)),
        thickness=float(thickness),
    )
    return SliceHeader(str(path), str(ds.get("SeriesInstanceUID", "")), geometry)


def require_tags(ds: Dataset, tags: Sequence[str]) -> None:
    """:class:`NotAnImage` unless ``ds`` is a DICOM object holding every one of ``tags``."""
    if "SOPClassUID" not in ds and "Modality" not in ds:
        if getattr(ds, "file_meta", None):
            raise NotAnImage("truncated DICOM file: nothing after the file meta header")
        raise NotAnImage("not a DICOM file (no SOP class, no modality)")
    missing = [tag for tag in tags if tag not in ds]
    if missing:
        kind = ds.get("Modality", "?")
        sop = getattr(ds.get("SOPClassUID"), "name", ds.get("SOPClassUID", "?"))
        if "Image" in str(sop):  # an image object cut short before its geometry
            raise NotAnImage(f"truncated {sop} header: no {', '.join(missing)}")
        raise NotAnImage(f"not an image (Modality {kind}, {sop}): no {', '.join(missing)}")


def frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def read_series(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stored values times RescaleSlope plus RescaleIntercept (Hounsfield units for CT) as a
    (column, row, slice) float32 volume, and its RAS affine; :class:`BadSample` naming the file
    that fails."""
    import pydicom

    headers, planes = [], []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, force=True)
            pixels = ds.pixel_array.astype(np.float32)
            header = read_header(Path(path))
        except Exception as error:  # truncated pixel data, unknown transfer syntax, ...
            raise BadSample(path, f"cannot decode DICOM pixels: {error}") from error
        if pixels.shape != header.geometry.shape:
            raise BadSample(path, f"pixel data of shape {pixels.shape} for {header.geometry.shape}")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        headers.append(header.geometry)
        planes.append(pixels * slope + intercept)
    try:
        order, affine = order_and_check(headers)
    except ValueError as error:
        raise BadSample(paths[0], f"series geometry: {error}") from error
    volume = np.stack([planes[i].T for i in order], axis=-1)  # (column, row, slice)
    return volume, affine
