"""A decoded radiograph and the MONAI steps that make it a fixed-size image in [0, 1].

Intensities: the file's own display window (DICOM VOI LUT or first WindowCenter/Width) when it
has one and ``data.voi`` is on, since that is how the modality meant the image to be read;
otherwise (PNG, DICOM without a VOI module) the ``data.percentiles`` of the image. MONOCHROME1
images are then inverted, so higher is brighter in every sample. The image is resized with its
aspect ratio kept to fit ``data.size`` and centred on black padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig


@dataclass(frozen=True)
class Radiograph:
    values: np.ndarray  # (rows, columns) float64: DICOM modality values or PNG grey levels
    inverted: bool  # MONOCHROME1: the highest values are shown darkest
    display_range: tuple[float, float] | None  # values shown black and white by the file's VOI


@dataclass(frozen=True)
class XrayPreprocessing:
    """What turns a decoded radiograph into the cached (H, W) image; all of it is in the key."""

    size: tuple[int, int]  # (H, W) pixels
    voi: bool  # use the file's display window when it has one
    percentiles: tuple[float, float]  # otherwise these percentiles are mapped to 0 and 1

    @classmethod
    def from_config(cls, data: DictConfig, size: tuple[int, ...]) -> XrayPreprocessing:
        return cls(
            size=(int(size[0]), int(size[1])),
            voi=bool(data.get("voi", True)),
            percentiles=tuple(float(v) for v in data.get("percentiles", (1, 99))),
        )

    def key(self) -> dict[str, Any]:
        return asdict(self)


def preprocess_radiograph(radiograph: Radiograph, settings: XrayPreprocessing) -> np.ndarray:
    """An (H, W) float32 image in [0, 1] of ``settings.size``, higher meaning brighter."""
    import torch
    from monai.transforms import (
        Resize,
        ResizeWithPadOrCrop,
        ScaleIntensityRange,
        ScaleIntensityRangePercentiles,
    )

    image = torch.from_numpy(radiograph.values[None].astype(np.float32))
    if settings.voi and radiograph.display_range is not None:
        low, high = radiograph.display_range
        image = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(image)
    else:
        lower, upper = settings.percentiles
        image = ScaleIntensityRangePercentiles(
            lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True
        )(image)
    if radiograph.inverted:
        image = 1.0 - image
    rows, columns = radiograph.values.shape
    scale = min(settings.size[0] / rows, settings.size[1] / columns)
    fitted = (max(1, round(rows * scale)), max(1, round(columns * scale)))
    image = Resize(spatial_size=fitted, mode="bilinear", anti_aliasing=True)(image)
    image = ResizeWithPadOrCrop(spatial_size=settings.size, mode="constant")(image)
    return np.ascontiguousarray(np.asarray(image[0], dtype=np.float32).clip(0, 1))
