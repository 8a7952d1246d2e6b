"""The circular field of view of a fundus photograph, and the square sample cut around it.

A fundus camera images the retina through a round aperture: around it the photograph is black
(or nearly: JPEG noise, a caption). The field of view (FOV) is found on a thumbnail: pixels
brighter than ``threshold`` of the image's 99th-percentile brightness, their largest connected
region (scikit-image), holes filled (a dark macula or a lesion stays inside). The photograph is
cropped to the FOV's bounding box, padded to a square with black and resized; the FOV mask
makes the same trip and comes back as the sample's valid-pixel mask, and pixels outside it are
set to 0 so no camera's surround (grey, captioned) reaches the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

THUMBNAIL_SIDE = 256  # pixels the FOV is searched on; enough for a circle, cheap on any photo
BLACK = 0.02  # a 99th-percentile brightness below this is a black image


class NoFieldOfView(ValueError):
    """A photograph without a detectable field of view (the reason is the message)."""


@dataclass(frozen=True)
class FovSettings:
    threshold: float  # share of the 99th-percentile brightness a FOV pixel exceeds
    min_area: float  # share of the photograph the FOV must cover

    @classmethod
    def from_config(cls, data: object) -> FovSettings:
        return cls(float(data.fov_threshold), float(data.fov_min_area))  # type: ignore[attr-defined]


def find_field_of_view(brightness: np.ndarray, settings: FovSettings) -> np.ndarray:
    """(h, w) bool FOV of a brightness image (h, w) in [0, 1]; :class:`NoFieldOfView` when
    there is none."""
    from scipy.ndimage import binary_fill_holes
    from skimage.measure import label

    top = float(np.percentile(brightness, 99))
    if top < BLACK:
        raise NoFieldOfView(f"a black image (99th-percentile brightness {top:.3f})")
    regions = label(brightness > settings.threshold * top, connectivity=2)
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    fov = binary_fill_holes(regions == int(sizes.argmax()))
    share = float(fov.mean())
    if share < settings.min_area:
        raise NoFieldOfView(
            f"no field of view: the largest bright region covers {share:.1%} of the image"
            f" (data.fov_min_area={settings.min_area:.0%})"
        )
    return fov


def fundus_sample(rgb: np.ndarray, side: int, settings: FovSettings) -> tuple[Tensor, Tensor]:
    """The (3, side, side) image in [0, 1] of a photograph (H, W, 3) cropped to its field of
    view, padded square and resized, black outside the FOV, and its (1, side, side) FOV mask."""
    height, width = rgb.shape[:2]
    stride = max(1, -(-max(height, width) // THUMBNAIL_SIDE))
    fov = find_field_of_view(rgb[::stride, ::stride].max(axis=2), settings)
    rows, columns = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    top, bottom = rows[0], rows[-1] + 1
    left, right = columns[0], columns[-1] + 1
    crop = rgb[top * stride : bottom * stride, left * stride : right * stride]
    image = _square(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1), side)
    mask = torch.from_numpy(fov[top:bottom, left:right].astype(np.float32))[None]
    valid = (_square(mask, side) >= 0.5).float()
    return (image.clamp(0, 1) * valid).contiguous(), valid


def _square(image: Tensor, side: int) -> Tensor:
    """(C, h, w) padded with zeros to a centred square and resized (antialiased) to ``side``."""
    height, width = image.shape[1:]
    extent = max(height, width)
    pad_rows, pad_columns = extent - height, extent - width
    padded = F.pad(
        image,
        (pad_columns // 2, pad_columns - pad_columns // 2, pad_rows // 2, pad_rows - pad_rows // 2),
    )
    resized = F.interpolate(
        padded[None].float(),
        size=(side, side),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return resized[0]
