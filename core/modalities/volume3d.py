"""volume3d: (C, D, H, W) volumes: 3D patches, normalised-voxel target, 3D crops and flips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fmcore.modalities import views
from fmcore.modalities.base import ViewSpec
from fmcore.modalities.grid import GridModality


class Volume3D(GridModality):
    name = "volume3d"
    layout = "(C, D, H, W)"

    def patch_shape(self, options: dict) -> tuple[int, ...]:
        patch = int(options.get("patch_size", 16))
        return (patch, patch, patch)

    def augment(
        self, batch: Tensor, spec: ViewSpec, out_size: Sequence[int], generator: torch.Generator
    ) -> Tensor:
        # Any anatomical axis may be mirrored: views must not teach left/right or up/down.
        x = views.random_resized_crop(
            batch, out_size, spec.scale, spec.aspect, spec.flip, generator, flip_axes=[0, 1, 2]
        )
        x = views.intensity_jitter(x, spec.jitter, spec.jitter_strength, generator)
        x = views.random_blur(x, spec.blur, generator, axes=(0, 1, 2))
        return views.random_noise(x, spec.noise, generator)
