"""The embedded 2D sample: synthetic chest radiographs, written as a DX DICOM (MONOCHROME2), a
CR DICOM (MONOCHROME1) and 8- and 16-bit PNGs, so ``fmcore train domain=radiology
data.mode=xray`` runs with no data.

Each radiograph is a projection of the CT phantom of ``sample_data.py`` through its anterior
axis: the line integral of attenuation, so bone and soft tissue are bright and lungs dark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmcore.dicom_writing import new_dicom
from fmcore.domains.radiology.sample_data import AIR, SPACING_MM, phantom

SIZE = 96  # pixels per side
BITS = 12
WHITE = 2**BITS - 1
WINDOW = (2000.0, 3600.0)  # WindowCenter, WindowWidth of the MONOCHROME2 values
FORMATS = ("dx.dcm", "cr.dcm", "8bit.png", "16bit.png")


def chest_radiograph(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A (rows, columns) uint16 image of 12-bit values, higher meaning brighter: the patient
    seen from behind (PA), head at the top, their right on the viewer's left."""
    volume = phantom(rng, size)  # (R, A, S) in HU
    attenuation = (volume - AIR) / -AIR  # 0 for air, 1 for water
    projection = attenuation.sum(axis=1)  # (R, S)
    image = projection[::-1, ::-1].T  # rows from superior, columns from the patient's right
    image = image / image.max() * 0.95 * WHITE + rng.normal(0, 15, image.shape)
    return np.clip(np.round(image), 0, WHITE).astype(np.uint16)


def write_dicom_radiograph(path: Path, image: np.ndarray, photometric: str, name: str) -> None:
    """``image`` (higher is brighter) as a DX (MONOCHROME2) or CR (MONOCHROME1) file, the latter
    storing ``WHITE - image`` with the window mirrored so that both display the same."""
    from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

    inverse = photometric == "MONOCHROME1"
    sop_class = (
        ComputedRadiographyImageStorage if inverse else DigitalXRayImageStorageForPresentation
    )
    ds = new_dicom(sop_class, name, "CR" if inverse else "DX")
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["R", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImagerPixelSpacing = [SPACING_MM, SPACING_MM]
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS, BITS - 1, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    center, width = WINDOW
    # LINEAR windows are centred at c - 0.5, so the mirror of c about WHITE is WHITE + 1 - c.
    ds.WindowCenter, ds.WindowWidth = (WHITE + 1 - center if inverse else center), width
    ds.PresentationLUTShape = "INVERSE" if inverse else "IDENTITY"
    if not inverse:
        ds.PresentationIntentType = "FOR PRESENTATION"
    stored = WHITE - image if inverse else image
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_png(path: Path, image: np.ndarray, bits: int) -> None:
    """``image`` as a greyscale PNG of 8 or 16 bits, its 12-bit values scaled to the full range."""
    from PIL import Image

    top = 2**bits - 1
    scaled = np.round(image.astype(np.float64) / WHITE * top)
    Image.fromarray(scaled.astype(np.uint8 if bits == 8 else np.uint16)).save(path)


def write_radiographs(directory: Path, count: int = 8) -> None:
    """``count`` radiographs, cycling through the four file formats."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        image = chest_radiograph(np.random.default_rng(number))
        kind = FORMATS[number % len(FORMATS)]
        path = directory / f"chest_{number}_{kind}"
        if kind == "dx.dcm":
            write_dicom_radiograph(path, image, "MONOCHROME2", f"chest_{number}")
        elif kind == "cr.dcm":
            write_dicom_radiograph(path, image, "MONOCHROME1", f"chest_{number}")
        else:
            write_png(path, image, 8 if kind == "8bit.png" else 16)
