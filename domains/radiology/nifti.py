"""Reading NIfTI with nibabel: the stored volume and its voxel-to-RAS affine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmcore.errors import BadSample

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def check_header(path: Path) -> None:
    """Fail early (at index time) on files whose header does not describe a 3D volume."""
    import nibabel as nib

    image = nib.load(path)
    shape = image.shape
    if len(shape) < 3 or any(s < 1 for s in shape[:3]):
        raise ValueError(f"not a 3D volume (shape {shape})")
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        raise ValueError(f"a 4D series of shape {shape}: split it into 3D volumes")


def read_nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Scaled voxel values (scl_slope/inter applied) as float32 (i, j, k) and the affine."""
    import nibabel as nib

    try:
        image = nib.load(path)
        volume = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # truncated gzip, short data block, ...
        raise BadSample(path, f"cannot read NIfTI: {error}") from error
    return volume.reshape(volume.shape[:3]), np.asarray(image.affine, float)
