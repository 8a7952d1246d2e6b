"""Batched on-device view operations for grid tensors (B, C, *spatial) with 2 or 3 spatial axes.

One affine-grid implementation serves 2D crops, 3D crops and video crops: a crop box per sample
becomes an affine matrix, flips are negative scales in the same matrix, and a single
``grid_sample`` call crops, resizes and flips the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def uniform(
    low: float, high: float, shape: Sequence[int], generator: torch.Generator, device: torch.device
) -> Tensor:
    """Uniform samples in [low, high) from ``generator``, created on ``device``."""
    return low + (high - low) * torch.rand(*shape, generator=generator, device=device)


def _chance(p: float, batch: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(batch, generator=generator, device=device) < p


def sample_crop_boxes(
    batch: int,
    spatial_dims: int,
    scale: tuple[float, float],
    aspect: tuple[float, float],
    generator: torch.Generator,
    device: torch.device,
    fixed_axes: Sequence[int] = (),
) -> tuple[Tensor, Tensor]:
    """Random crop boxes as (centres, extents), each (B, spatial_dims), as fractions of each axis.

    The cropped fraction of the free axes' area/volume is drawn from ``scale``; the aspect ratio
    of each free axis to the first free axis (width / height for an image) is log-uniform in
    ``aspect``. Axes in ``fixed_axes`` are kept whole.
    Extents are clamped to 1, so a box never leaves the sample.
    """
    free = [a for a in range(spatial_dims) if a not in fixed_axes]
    area = uniform(scale[0], scale[1], (batch,), generator, device)
    log_ratio = uniform(
        math.log(aspect[0]), math.log(aspect[1]), (batch, len(free)), generator, device
    )
    # Ratios are relative to the first free axis; subtracting the mean makes them multiply to 1.
    log_ratio[:, :1] = 0
    log_ratio = log_ratio - log_ratio.mean(dim=1, keepdim=True)
    free_extents = (area.log().unsqueeze(1) / len(free) + log_ratio).exp().clamp(max=1.0)
    extents = torch.ones(batch, spatial_dims, device=device)
    extents[:, free] = free_extents
    centres = extents / 2 + (1 - extents) * torch.rand(
        batch, spatial_dims, generator=generator, device=device
    )
    return centres, extents


def crop_resize(
    x: Tensor,
    centres: Tensor,
    extents: Tensor,
    out_size: Sequence[int],
    flips: Tensor | None = None,
    mode: str = "bilinear",
) -> Tensor:
    """Crop box ``centres``/``extents`` (fractions per spatial axis) of each sample to ``out_size``.

    x: (B, C, *S) with len(S) in (2, 3). flips: (B, len(S)) bool, mirror that axis of the crop.
    A box edge-to-edge: output pixel i samples the input at
    ``(c - e/2 + (i + 0.5) * e / out) * size - 0.5`` in pixel coordinates (align_corners=False).
    """
    batch, channels, *spatial = x.shape
    nd = len(spatial)
    scales = extents.to(x.dtype)
    if flips is not None:
        scales = torch.where(flips, -scales, scales)
    theta = torch.zeros(batch, nd, nd + 1, dtype=x.dtype, device=x.device)
    # affine_grid orders coordinates (x, y[, z]) = last spatial axis first.
    for row, axis in enumerate(reversed(range(nd))):
        theta[:, row, row] = scales[:, axis]
        theta[:, row, nd] = 2 * centres[:, axis].to(x.dtype) - 1
    grid = F.affine_grid(theta, [batch, channels, *out_size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def random_resized_crop(
    x: Tensor,
    out_size: Sequence[int],
    scale: tuple[float, float],
    aspect: tuple[float, float],
    flip: float,
    generator: torch.Generator,
    fixed_axes: Sequence[int] = (),
    flip_axes: Sequence[int] | None = None,
) -> Tensor:
    """Random crop, resize and flip of every sample in one ``grid_sample`` call."""
    batch, nd = x.shape[0], x.dim() - 2
    centres, extents = sample_crop_boxes(batch, nd, scale, aspect, generator, x.device, fixed_axes)
    flip_axes = [nd - 1] if flip_axes is None else list(flip_axes)
    flips = torch.zeros(batch, nd, dtype=torch.bool, device=x.device)
    for axis in flip_axes:
        flips[:, axis] = _chance(flip, batch, generator, x.device)
    return crop_resize(x, centres, extents, out_size, flips)


def _where(apply: Tensor, changed: Tensor, original: Tensor) -> Tensor:
    shape = (-1,) + (1,) * (original.dim() - 1)
    return torch.where(apply.view(shape), changed, original)


def intensity_jitter(x: Tensor, p: float, strength: float, generator: torch.Generator) -> Tensor:
    """Random brightness, contrast and (for 3 channels) saturation, each per sample."""
    batch, channels = x.shape[:2]
    apply = _chance(p, batch, generator, x.device)
    shape = (batch,) + (1,) * (x.dim() - 1)
    brightness = uniform(1 - strength, 1 + strength, shape, generator, x.device)
    contrast = uniform(1 - strength, 1 + strength, shape, generator, x.device)
    jittered = x * brightness
    mean = jittered.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    jittered = (jittered - mean) * contrast + mean
    if channels == 3:
        saturation = uniform(1 - strength, 1 + strength, shape, generator, x.device)
        gray = luminance(jittered)
        jittered = (jittered - gray) * saturation + gray
    return _where(apply, jittered.clamp(0, 1), x)


def luminance(x: Tensor) -> Tensor:
    """ITU-R 601 luma of an RGB batch (B, 3, ...), keeping a channel axis of size 1."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return torch.einsum("bc...,c->b...", x, weights).unsqueeze(1)


def random_temporal_crop(
    x: Tensor, scale: tuple[float, float], generator: torch.Generator, axis: int = 2
) -> Tensor:
    """Each clip's frames from a random window spanning ``scale`` of its length (a share drawn
    per clip), resampled to the full length by repeating frames: views of one clip then cover
    different stretches of time, at different speeds."""
    length = x.shape[axis]
    if scale[0] >= 1 or length < 2:
        return x
    batch = x.shape[0]
    share = uniform(scale[0], min(scale[1], 1.0), (batch,), generator, x.device)
    spans = (share * length).round().clamp(1, length)
    starts = (
        torch.rand(batch, generator=generator, device=x.device) * (length - spans + 1)
    ).floor()
    steps = torch.arange(length, device=x.device)
    frames = (starts[:, None] + (steps[None] * spans[:, None] / length).floor()).long()
    shape = [batch] + [1] * (x.dim() - 1)
    shape[axis] = length
    return x.gather(axis, frames.view(shape).expand_as(x))


def random_grayscale(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    if x.shape[1] != 3 or p <= 0:
        return x
    apply = _chance(p, x.shape[0], generator, x.device)
    return _where(apply, luminance(x).expand_as(x), x)


def random_solarize(
    x: Tensor, p: float, generator: torch.Generator, threshold: float = 0.5
) -> Tensor:
    if p <= 0:
        return x
    apply = _chance(p, x.shape[0], generator, x.device)
    return _where(apply, torch.where(x >= threshold, 1 - x, x), x)


def gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """Normalised 1D Gaussian kernels (B, 2 * radius + 1), one per sigma."""
    offsets = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    kernels = torch.exp(-0.5 * (offsets / sigma.unsqueeze(1)) ** 2)
    # Tails below 1e-12 are dropped: subnormal weights would slow every later CPU op on the view.
    kernels = torch.where(kernels < 1e-12, torch.zeros_like(kernels), kernels)
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, axes: Sequence[int]) -> Tensor:
    """Separable Gaussian blur of each sample with its own sigma (in pixels) along ``axes``.

    x: (B, C, *S); sigma: (B,); axes index the spatial axes S. Borders are reflected.
    """
    batch, _, *spatial = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    kernels = gaussian_kernels(sigma.to(x.dtype), radius)
    for axis in axes:
        radius_here = min(radius, spatial[axis] - 1)
        k = kernels[:, radius - radius_here : radius + radius_here + 1]
        k = k / k.sum(dim=1, keepdim=True)
        moved = x.movedim(axis + 2, -1)
        moved_shape = moved.shape
        rows = moved.reshape(1, -1, moved_shape[-1])
        per_row = rows.shape[1] // batch
        weight = k.repeat_interleave(per_row, dim=0).unsqueeze(1)
        rows = F.pad(rows, (radius_here, radius_here), mode="reflect")
        blurred = F.conv1d(rows, weight, groups=rows.shape[1])
        x = blurred.reshape(moved_shape).movedim(-1, axis + 2)
    return x


def random_blur(
    x: Tensor,
    p: float,
    generator: torch.Generator,
    axes: Sequence[int],
    sigma_range: tuple[float, float] = (0.1, 2.0),
) -> Tensor:
    """Blur each sample with probability ``p``; sigma (pixels at 224 px scale) uniform in range."""
    if p <= 0:
        return x
    batch = x.shape[0]
    apply = _chance(p, batch, generator, x.device)
    reference = min(x.shape[2 + a] for a in axes)
    sigma = uniform(*sigma_range, (batch,), generator, x.device) * reference / 224
    sigma = sigma.clamp(min=0.1)
    return _where(apply, gaussian_blur(x, sigma, axes), x)


def random_noise(x: Tensor, std: float, generator: torch.Generator) -> Tensor:
    if std <= 0:
        return x
    return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
