"""H&E stain jitter in HED space: a batched view step that runs on the device.

Stain intensity and hue vary between labs, scanners and days far more than natural images vary
in brightness, and an encoder should not learn a lab's colour. Ruifrok & Johnston (2001) separate
a stained pixel's optical density into haematoxylin, eosin and DAB amounts (Beer-Lambert: density
is linear in stain amount); Tellez et al. (2018) perturb each amount by a random factor and shift
and recompose the pixel. Doing it in stain space changes the stains, not arbitrary RGB directions.

Densities here are natural-log optical densities, ``-ln(rgb)``; ``skimage.color.rgb2hed`` uses
the same vectors with densities divided by ``-ln(1e-6)`` (about 13.8), so its ``bias`` of ``b``
is ``13.8 b`` here. Stain amounts are not clamped at zero: with no jitter the step is exactly
the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Ruifrok-Johnston stain vectors, one row each: haematoxylin, eosin, DAB (RGB optical density).
RGB_FROM_HED = (
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)
#: Darkest intensity: ln(0) is undefined, and black carries no stain information anyway.
EPS = 1e-6


def _matrices(device: torch.device) -> tuple[Tensor, Tensor]:
    rgb_from_hed = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    return rgb_from_hed.float().to(device), hed_from_rgb.float().to(device)


def rgb_to_hed(rgb: Tensor) -> Tensor:
    """Stain amounts (B, 3, ...) [H, E, D] of RGB intensities (B, 3, ...) in [0, 1]."""
    _, hed_from_rgb = _matrices(rgb.device)
    density = -torch.log(rgb.clamp(min=EPS))
    return torch.einsum("bc...,cs->bs...", density, hed_from_rgb)


def hed_to_rgb(hed: Tensor) -> Tensor:
    """RGB intensities (B, 3, ...) in [0, 1] of stain amounts (B, 3, ...)."""
    rgb_from_hed, _ = _matrices(hed.device)
    density = torch.einsum("bs...,sc->bc...", hed, rgb_from_hed)
    return torch.exp(-density).clamp(0.0, 1.0)


def hed_jitter(rgb: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """Recompose each image with its stain amounts scaled by ``scale`` and shifted by ``bias``.

    rgb: (B, 3, H, W) in [0, 1]; scale, bias: (B, 3) per image and stain [H, E, D].
    """
    shape = (*scale.shape, *([1] * (rgb.dim() - 2)))
    hed = rgb_to_hed(rgb)
    return hed_to_rgb(hed * scale.view(shape) + bias.view(shape))


class HEDJitter:
    """With probability ``p`` per view: stain amounts times U(1-scale, 1+scale) plus
    U(-bias, bias) optical density, independently for H, E and D.

    Computed in float32 outside autocast: a bf16 log/exp round trip shifts colours by several
    intensity levels, more than a light jitter itself.
    """

    def __init__(self, p: float = 0.8, scale: float = 0.05, bias: float = 0.05) -> None:
        self.p = float(p)
        self.scale = float(scale)
        self.bias = float(bias)

    def __call__(self, views: Tensor, generator: torch.Generator) -> Tensor:
        if views.shape[1] != 3 or self.p <= 0 or (self.scale <= 0 and self.bias <= 0):
            return views
        batch, device = views.shape[0], views.device
        apply = torch.rand(batch, generator=generator, device=device) < self.p
        unit = torch.rand(2, batch, 3, generator=generator, device=device) * 2 - 1
        scale = 1 + self.scale * unit[0]
        bias = self.bias * unit[1]
        with torch.autocast(device_type=device.type, enabled=False):
            jittered = hed_jitter(views.float(), scale, bias).to(views.dtype)
        return torch.where(apply.view(-1, *([1] * (views.dim() - 1))), jittered, views)

    def __repr__(self) -> str:
        return f"HEDJitter(p={self.p}, scale={self.scale}, bias={self.bias})"
