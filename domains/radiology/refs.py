"""What the engine samples over: one fixed-size crop of one volume, or one radiograph.

A reference names its input files and carries its crop position as fractions of the free room
in each axis, drawn in ``index`` with a seeded generator. ``load`` turns the fractions into
voxel offsets once it knows the resampled shape, so it stays deterministic per reference without
index having to decode anything.
"""

from __future__ import annotations

from typing import NamedTuple


class VolumeRef(NamedTuple):
    """One crop of one volume: a NIfTI file (one path) or a DICOM series (its slice files,
    already ordered along the slice normal)."""

    kind: str  # "nifti" or "dicom"
    paths: tuple[str, ...]
    volume_id: str  # the file, or the series folder plus its SeriesInstanceUID
    label: int
    crop: tuple[float, float, float]  # position in [0, 1] of the crop along (D, H, W)


class RadiographRef(NamedTuple):
    """One 2D radiograph: a single-frame DICOM file or a PNG file."""

    kind: str  # "dicom" or "png"
    path: str
    label: int = -1  # from data.labels; -1: unlabelled
