"""MONAI preprocessing of one decoded volume: RAS orientation, resampling, intensity, foreground.

The settings come from ``data`` and are all part of the cache key (see ``cache.py``), so changing
any of them re-runs this once per volume instead of reusing stale arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig

from fmcore.errors import ConfigError

MODES = ("ct", "mri")


@dataclass(frozen=True)
class Preprocessing:
    """What turns a stored volume into the cached, [0, 1] RAS volume at ``spacing``."""

    mode: str  # ct: fixed Hounsfield window; mri: per-volume percentiles
    spacing: tuple[float, float, float] | None  # mm along (R, A, S); None keeps the native grid
    window: tuple[float, float]  # CT: HU mapped to 0 and 1
    percentiles: tuple[float, float]  # MRI: percentiles mapped to 0 and 1
    foreground: float | None  # crop to voxels above this (after scaling); None: no cropping

    @classmethod
    def from_config(cls, data: DictConfig) -> Preprocessing:
        mode = str(data.get("mode", "ct"))
        if mode == "xray":
            raise ConfigError(
                "data.mode=xray (2D radiographs) is not implemented yet; valid: ct, mri"
            )
        if mode not in MODES:
            raise ConfigError(
                f"data.mode={mode} is not supported by domain=radiology; valid: {', '.join(MODES)}"
            )
        spacing = data.get("spacing")
        foreground = data.get("foreground")
        return cls(
            mode=mode,
            spacing=None if spacing is None else tuple(float(s) for s in spacing),
            window=tuple(float(v) for v in data.get("window", (-1000, 1000))),
            percentiles=tuple(float(v) for v in data.get("percentiles", (1, 99))),
            foreground=None if foreground is None else float(foreground),
        )

    def key(self) -> dict[str, Any]:
        return asdict(self)


def preprocess(volume: np.ndarray, affine: np.ndarray, settings: Preprocessing) -> np.ndarray:
    """A (R, A, S)-ordered float32 volume in [0, 1] at ``settings.spacing``."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import (
        CropForeground,
        Orientation,
        ScaleIntensityRange,
        ScaleIntensityRangePercentiles,
        Spacing,
    )

    image = MetaTensor(torch.from_numpy(volume[None].copy()), affine=torch.as_tensor(affine))
    image = Orientation(axcodes="RAS", labels=None)(image)
    if settings.spacing is not None:
        image = Spacing(pixdim=settings.spacing, mode="bilinear", padding_mode="border")(image)
    if settings.mode == "ct":
        low, high = settings.window
        image = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(image)
    else:
        lower, upper = settings.percentiles
        image = ScaleIntensityRangePercentiles(
            lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True
        )(image)
    if settings.foreground is not None:
        threshold = settings.foreground
        if bool((image > threshold).any()):
            image = CropForeground(select_fn=lambda x: x > threshold, allow_smaller=True)(image)
    return np.ascontiguousarray(image.as_tensor()[0].numpy(), dtype=np.float32)
