"""Single-frame greyscale DICOM images (CR, DX, or any 2D image object) read as radiographs.

Indexing reads headers only; loading applies the Modality LUT (rescale slope and intercept) and
finds the range the VOI module shows from black to white.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fmcore.domains.radiology.dicom import NotAnImage, frames, require_tags
from fmcore.domains.radiology.radiograph import Radiograph
from fmcore.errors import BadSample

if TYPE_CHECKING:
    from pydicom import Dataset

GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
RADIOGRAPH_TAGS = ("Rows", "Columns", "PhotometricInterpretation")


def check_dicom_radiograph(path: Path) -> None:
    """:class:`NotAnImage` unless ``path`` holds one greyscale 2D frame (header only)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    require_tags(ds, RADIOGRAPH_TAGS)
    if frames(ds) > 1:
        raise NotAnImage(
            f"{frames(ds)} frames (a cine loop or a volume) where one 2D image is expected"
        )
    photometric = ds.PhotometricInterpretation
    if photometric not in GREYSCALE:
        raise NotAnImage(f"a {photometric} image where a greyscale radiograph is expected")


def read_dicom_radiograph(path: str) -> Radiograph:
    """Modality values, polarity and VOI range of one radiograph; :class:`BadSample` naming the
    file when its pixels cannot be decoded."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path, force=True)
        stored = ds.pixel_array
    except Exception as error:  # truncated pixel data, no pixel data, unknown transfer syntax
        raise BadSample(path, f"cannot decode DICOM pixels: {error}") from error
    if stored.ndim != 2:
        raise BadSample(path, f"pixel data of shape {stored.shape} where one 2D frame is expected")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    values, display_range = voi(values, ds)
    return Radiograph(values, ds.PhotometricInterpretation == "MONOCHROME1", display_range)


def voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, tuple[float, float] | None]:
    """``values`` through the file's first VOI transform, and the range of the result that it
    shows from black to white (PS3.3 C.11.2); ``None`` when the file has no usable VOI."""
    from pydicom.pixels import apply_voi

    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return apply_voi(np.rint(values).astype(np.int64), ds), (0.0, 2.0**bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return values, None
    center, width = (
        float(np.atleast_1d(ds[tag].value)[0]) for tag in ("WindowCenter", "WindowWidth")
    )
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if function == "LINEAR" and width >= 1:
        half = (width - 1) / 2
        return values, (center - 0.5 - half, center - 0.5 + half)
    if function == "LINEAR_EXACT" and width > 0:
        return values, (center - width / 2, center + width / 2)
    if function == "SIGMOID" and width > 0:
        return 1 / (1 + np.exp(-4 * (values - center) / width)), (0.0, 1.0)
    return values, None
