"""image2d: (C, H, W) images: 2D patches, normalised-pixel target, 2D crops and colour views."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fmcore.modalities import views
from fmcore.modalities.base import ViewSpec
from fmcore.modalities.grid import GridModality


class Image2D(GridModality):
    name = "image2d"
    layout = "(C, H, W)"

    def patch_shape(self, options: dict) -> tuple[int, ...]:
        patch = int(options.get("patch_size", 16))
        return (patch, patch)

    def augment(
        self, batch: Tensor, spec: ViewSpec, out_size: Sequence[int], generator: torch.Generator
    ) -> Tensor:
        x = views.random_resized_crop(
            batch, out_size, spec.scale, spec.aspect, spec.flip, generator, flip_axes=[1]
        )
        x = views.intensity_jitter(x, spec.jitter, spec.jitter_strength, generator)
        x = views.random_grayscale(x, spec.grayscale, generator)
        x = views.random_blur(x, spec.blur, generator, axes=(0, 1))
        x = views.random_solarize(x, spec.solarize, generator)
        return views.random_noise(x, spec.noise, generator)
