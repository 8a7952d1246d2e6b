"""From a decoded OCT volume to a fixed-size sample: percentiles, spacing, the retina band.

OCT intensities are speckle-heavy with a few very bright pixels (the RPE, reflections), so each
volume (or B-scan) is mapped to [0, 1] by its ``data.oct_percentiles``. Volumes whose files
record their spacing (DICOM, Heidelberg .vol; ``data.oct_file_spacing`` for the rest) are
resampled to ``data.oct_spacing``. Most of an A-scan is vitreous above the retina and choroid
below it, so the axial window is centred on the retina band: the centre of mass of the axial
brightness profile above its median. The B-scan and lateral windows are centred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fmcore.crops import crop_or_pad
from fmcore.domains.ophthalmology.oct_files import OctVolume
from fmcore.errors import ConfigError

PROFILE_SMOOTHING = 9  # axial pixels the band profile is averaged over


@dataclass(frozen=True)
class OctSettings:
    # (between B-scans, axial, lateral) in mm; the config lists (axial, lateral, B-scan) as
    # OCT readers do
    spacing: tuple[float, float, float] | None
    file_spacing: tuple[float, float, float] | None  # for files that record none
    percentiles: tuple[float, float]

    @classmethod
    def from_config(cls, data: object) -> OctSettings:
        return cls(
            _spacing(data, "oct_spacing"),
            _spacing(data, "oct_file_spacing"),
            tuple(float(p) for p in data.oct_percentiles),  # type: ignore[attr-defined]
        )


def _spacing(data: object, key: str) -> tuple[float, float, float] | None:
    value = data.get(key)  # type: ignore[attr-defined]
    if value is None:
        return None
    values = [float(v) for v in value]
    if len(values) != 3 or min(values) <= 0:
        raise ConfigError(f"data.{key}={values}: give [axial, lateral, B-scan] spacing in mm")
    axial, lateral, between = values
    return between, axial, lateral


def normalise(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """``values`` with its ``percentiles`` mapped to 0 and 1, clipped."""
    low, high = np.percentile(values, percentiles)
    return np.clip((values - low) / max(float(high - low), 1e-12), 0, 1).astype(np.float32)


def resample(
    values: np.ndarray,
    spacing: tuple[float, float, float],
    target: tuple[float, float, float],
    keep_bscans: bool,
) -> np.ndarray:
    """(B-scans, axial, lateral) at ``spacing`` -> at ``target`` (trilinear); with
    ``keep_bscans`` (one B-scan per sample) only within each B-scan."""
    shape = [
        max(1, round(length * have / want))
        for length, have, want in zip(values.shape, spacing, target, strict=True)
    ]
    if keep_bscans:
        shape[0] = values.shape[0]
    if tuple(shape) == values.shape:
        return values
    grid = torch.from_numpy(np.ascontiguousarray(values))[None, None]
    return F.interpolate(grid, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()


def band_centre(values: np.ndarray) -> float:
    """The axial pixel the retina band is centred on: the centre of mass of the smoothed axial
    profile's excess over its median (the middle when the profile is flat)."""
    profile = values.mean(axis=(0, 2))
    kernel = np.ones(PROFILE_SMOOTHING) / PROFILE_SMOOTHING
    profile = np.convolve(profile, kernel, mode="same")
    weight = np.clip(profile - np.median(profile), 0, None)
    if weight.sum() <= 0:
        return (len(profile) - 1) / 2
    return float((weight * np.arange(len(profile))).sum() / weight.sum())


def oct_sample(volume: OctVolume, size: tuple[int, ...], settings: OctSettings) -> np.ndarray:
    """(1, *size): ``size`` is (B-scans, axial, lateral) for a volume, (axial, lateral) for one
    B-scan (``volume`` then holds that B-scan only)."""
    one_bscan = len(size) == 2
    values = normalise(volume.values, settings.percentiles)
    spacing = volume.spacing or settings.file_spacing
    if settings.spacing is not None and spacing is not None:
        values = resample(values, spacing, settings.spacing, keep_bscans=one_bscan)
    axial_length, axial_size = values.shape[1], size[-2]
    room = axial_length - axial_size
    axial = (
        0.5 if room <= 0 else float(np.clip((band_centre(values) - axial_size / 2) / room, 0, 1))
    )
    if one_bscan:
        return crop_or_pad(values[0], size, (axial, 0.5))[None]
    return crop_or_pad(values, size, (0.5, axial, 0.5))[None]
