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

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fmcore.transport import quantize

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
    """The (3, side, side) image of a photograph (H, W, 3), uint8 or float in [0, 1], cropped
    to its field of view, fitted into a black square and resized, black outside the FOV, and its
    (1, side, side) uint8 FOV mask (1 inside). An 8-bit photograph stays uint8 (resizing uint8
    is many times faster than converting a full photograph to float first, and the device makes
    the floats); a deeper one, float here, is resized and handed over as uint16."""
    height, width = rgb.shape[:2]
    stride = max(1, -(-max(height, width) // THUMBNAIL_SIDE))
    thumbnail = rgb[::stride, ::stride].max(axis=2).astype(np.float32)
    if rgb.dtype == np.uint8:
        thumbnail /= 255.0
    fov = find_field_of_view(thumbnail, settings)
    rows, columns = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    top, bottom = rows[0], rows[-1] + 1
    left, right = columns[0], columns[-1] + 1
    with warnings.catch_warnings():  # Pillow's arrays are read-only; the crop is only read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        crop = torch.from_numpy(rgb[top * stride : bottom * stride, left * stride : right * stride])
    image = _fit_square(crop.permute(2, 0, 1), side)
    mask = torch.from_numpy(fov[top:bottom, left:right].astype(np.float32))[None]
    valid = (_fit_square(mask, side) >= 0.5).to(torch.uint8)
    if image.dtype == torch.uint8:
        return image * valid, valid
    return quantize(image * valid, torch.uint16), valid


def _fit_square(image: Tensor, side: int) -> Tensor:
    """(C, h, w) resized (antialiased) to fit a ``side`` square with its aspect kept, centred
    on zeros: the photograph padded square, then resized, without making the padding."""
    height, width = image.shape[1:]
    extent = max(height, width)
    fitted = (max(1, round(side * height / extent)), max(1, round(side * width / extent)))
    resized = F.interpolate(
        image[None], size=fitted, mode="bilinear", antialias=True, align_corners=False
    )[0]
    canvas = resized.new_zeros((image.shape[0], side, side))
    row, column = (side - fitted[0]) // 2, (side - fitted[1]) // 2
    canvas[:, row : row + fitted[0], column : column + fitted[1]] = resized
    return canvas
