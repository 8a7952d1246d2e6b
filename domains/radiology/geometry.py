"""DICOM slice geometry: which way a series runs, in which order, and whether it is one grid.

DICOM stores positions in patient LPS millimetres; MONAI and NIfTI use RAS. The affine built
here maps voxel (column, row, slice) to RAS so MONAI's Orientation and Spacing treat DICOM and
NIfTI inputs the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
POSITION_TOLERANCE_MM = 0.01  # slices closer than this are duplicates
SPACING_TOLERANCE = 0.05  # relative deviation of a gap from the median gap


class InconsistentGeometry(ValueError):
    """A series whose slices do not form one regular grid."""


@dataclass(frozen=True)
class SliceGeometry:
    """The tags of one slice that place it in space."""

    position: tuple[float, float, float]  # ImagePositionPatient (LPS, mm)
    orientation: tuple[float, ...]  # ImageOrientationPatient: row direction, column direction
    pixel_spacing: tuple[float, float]  # PixelSpacing: between rows, between columns
    shape: tuple[int, int]  # Rows, Columns
    thickness: float  # SliceThickness (or SpacingBetweenSlices), used for a single slice


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, column)


def order_and_check(slices: Sequence[SliceGeometry]) -> tuple[list[int], np.ndarray]:
    """The slice order along the normal (by projected position) and the RAS voxel-to-world
    affine of the stacked volume indexed (column, row, slice).

    Raises :class:`InconsistentGeometry` when slices differ in size, orientation or pixel
    spacing, share a position, or are unevenly spaced.
    """
    first = slices[0]
    for other in slices[1:]:
        if other.shape != first.shape:
            raise InconsistentGeometry(f"slices of sizes {first.shape} and {other.shape}")
        if not np.allclose(other.orientation, first.orientation, atol=1e-4):
            raise InconsistentGeometry("slices with different ImageOrientationPatient")
        if not np.allclose(other.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise InconsistentGeometry("slices with different PixelSpacing")
    normal = slice_normal(first.orientation)
    heights = np.array([np.dot(normal, s.position) for s in slices])
    order = [int(i) for i in np.argsort(heights, kind="stable")]
    gaps = np.diff(heights[order])
    if len(slices) > 1:
        if np.any(gaps < POSITION_TOLERANCE_MM):
            raise InconsistentGeometry("two slices at the same ImagePositionPatient")
        median = float(np.median(gaps))
        if np.any(np.abs(gaps - median) > SPACING_TOLERANCE * median):
            raise InconsistentGeometry(
                f"uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm): missing slices?"
            )
        step = (np.asarray(slices[order[-1]].position) - slices[order[0]].position) / (
            len(slices) - 1
        )
    else:
        step = normal * (first.thickness or 1.0)
    row_dir = np.asarray(first.orientation[:3], float)
    column_dir = np.asarray(first.orientation[3:], float)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * first.pixel_spacing[1]  # along a row: the column index grows
    affine[:3, 1] = column_dir * first.pixel_spacing[0]  # down a column: the row index grows
    affine[:3, 2] = step
    affine[:3, 3] = slices[order[0]].position
    return order, LPS_TO_RAS @ affine
