"""The embedded sample: synthetic chest-CT-like volumes in Hounsfield units, written as NIfTI
and as a DICOM CT series, so ``fmcore train domain=radiology`` runs with no data.

The same phantom is written both ways, which lets tests check that the DICOM reader (ordering,
geometry tags, rescale) reproduces the NIfTI volume voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmcore.dicom_writing import new_dicom

AIR, LUNG, WATER, BONE = -1000.0, -800.0, 0.0, 700.0
SPACING_MM = 1.5
SIZE = 48  # voxels per side: small enough for CPU tests
INTERCEPT = -1024.0  # stored = HU - INTERCEPT, as CT scanners do


def phantom(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A (R, A, S)-ordered volume in HU: air, a water body ellipse, two lungs and a spine,
    with a random shape jitter and scanner-like noise."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, size),) * 3, indexing="ij")
    a, b = rng.uniform(0.75, 0.9), rng.uniform(0.55, 0.7)
    body = (x / a) ** 2 + (y / b) ** 2 < 1
    body &= np.abs(z) < rng.uniform(0.7, 0.85)
    volume = np.full(x.shape, AIR, np.float32)
    volume[body] = WATER
    for side in (-1, 1):
        lung = ((x - side * 0.38 * a) / (0.28 * a)) ** 2 + (y / (0.6 * b)) ** 2 + (z / 0.6) ** 2 < 1
        volume[lung & body] = LUNG
    spine = ((x / 0.12) ** 2 + ((y + 0.75 * b) / 0.12) ** 2 < 1) & body
    volume[spine] = BONE
    volume += rng.normal(0, 20, volume.shape).astype(np.float32)
    return np.clip(np.round(volume), AIR, 3000).astype(np.float32)


def ras_affine(size: int = SIZE, spacing: float = SPACING_MM) -> np.ndarray:
    """1.5 mm voxels, the volume centred on the scanner origin."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (size - 1) / 2
    return affine


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(volume.astype(np.int16), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def write_dicom_series(folder: Path, volume: np.ndarray, affine: np.ndarray, name: str) -> None:
    """One CT Image Storage file per axial slice, patient LPS geometry, stored = HU + 1024."""
    from pydicom.uid import CTImageStorage, generate_uid

    folder.mkdir(parents=True)
    spacing = float(affine[0, 0])
    columns, rows, slices = volume.shape
    frame_uid = generate_uid(entropy_srcs=[name, "frame"])
    for k in range(slices):
        # Row direction +x LPS (towards the left), column direction +y LPS (posterior): the
        # first pixel is the RAS voxel (last, last, k).
        corner_ras = affine @ np.array([columns - 1, rows - 1, k, 1.0])
        position = [-corner_ras[0], -corner_ras[1], corner_ras[2]]
        plane = volume[::-1, ::-1, k].T
        ds = new_dicom(CTImageStorage, name, "CT", instance=str(k))
        ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = spacing
        ds.SliceLocation = f"{position[2]:.4f}"
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1, "HU"
        ds.PixelData = np.ascontiguousarray(plane - INTERCEPT).astype("<u2").tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)


def write_sample(directory: Path, volumes: int = 2) -> None:
    """``volumes`` phantoms as NIfTI; the first also as a DICOM series."""
    directory.mkdir(parents=True, exist_ok=True)
    affine = ras_affine()
    for number in range(volumes):
        volume = phantom(np.random.default_rng(number))
        write_nifti(directory / f"phantom_{number}.nii.gz", volume, affine)
        if number == 0:
            write_dicom_series(directory / "phantom_0_dicom", volume, affine, f"phantom_{number}")
