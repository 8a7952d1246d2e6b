"""MONAI preprocessing of one decoded volume: RAS orientation, resampling, intensity, foreground.

CT intensities go through one or more Hounsfield windows (``data.windows``), each a channel.

The settings come from ``data`` and are all part of the cache key (see ``cache.py``), so changing
any of them re-runs this once per volume instead of reusing stale arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig

from fmcore.errors import ConfigError


@dataclass(frozen=True)
class Preprocessing:
    """What turns a stored volume into the cached, [0, 1] RAS volume at ``spacing``."""

    mode: str  # ct: fixed Hounsfield windows; mri: per-volume percentiles
    spacing: tuple[float, float, float] | None  # mm along (R, A, S); None keeps the native grid
    windows: tuple[tuple[float, float], ...]  # CT: HU mapped to 0 and 1, one channel each
    percentiles: tuple[float, float]  # MRI: percentiles mapped to 0 and 1
    foreground: float | None  # crop to voxels above this (after scaling); None: no cropping

    @classmethod
    def from_config(cls, data: DictConfig) -> Preprocessing:
        spacing = data.get("spacing")
        foreground = data.get("foreground")
        return cls(
            mode=str(data.mode),
            spacing=None if spacing is None else tuple(float(s) for s in spacing),
            windows=read_windows(data.get("windows", [[-1000, 1000]])),
            percentiles=tuple(float(v) for v in data.get("percentiles", (1, 99))),
            foreground=None if foreground is None else float(foreground),
        )

    @property
    def channels(self) -> int:
        return len(self.windows) if self.mode == "ct" else 1

    def key(self) -> dict[str, Any]:
        return asdict(self)


def read_windows(windows: Any) -> tuple[tuple[float, float], ...]:
    """``data.windows`` as ``(low, high)`` pairs; :class:`ConfigError` for anything else."""
    pairs = [] if windows is None else list(windows)
    if not pairs or any(len(pair) != 2 or float(pair[0]) >= float(pair[1]) for pair in pairs):
        raise ConfigError(
            f"data.windows must list [low, high] HU pairs with low < high, e.g. [[-1000, 1000]],"
            f" got {windows}"
        )
    return tuple((float(low), float(high)) for low, high in pairs)


def preprocess(volume: np.ndarray, affine: np.ndarray, settings: Preprocessing) -> np.ndarray:
    """A (C, R, A, S)-ordered float32 volume in [0, 1] at ``settings.spacing``: one channel per
    CT window, one for MRI."""
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
        image = torch.cat(
            [
                ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(image)
                for low, high in settings.windows
            ]
        )
    else:
        lower, upper = settings.percentiles
        image = ScaleIntensityRangePercentiles(
            lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True
        )(image)
    if settings.foreground is not None:
        threshold = settings.foreground
        if bool((image > threshold).any()):
            image = CropForeground(select_fn=lambda x: x > threshold, allow_smaller=True)(image)
    return np.ascontiguousarray(image.as_tensor().numpy(), dtype=np.float32)
