"""video: (C, T, H, W) clips: tubelets, normalised-tubelet target, spatial crops, tube masking."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fmcore.modalities import views
from fmcore.modalities.base import Tokens, ViewOp, ViewSpec, ViewStep
from fmcore.modalities.grid import GridModality
from fmcore.modalities.masking import block_extents, random_token_mask

TIME_AXIS = 0


class Video(GridModality):
    name = "video"
    layout = "(C, T, H, W)"

    def patch_shape(self, options: dict) -> tuple[int, ...]:
        patch = int(options.get("patch_size", 16))
        return (int(options.get("tubelet", 2)), patch, patch)

    def view_steps(self, spec: ViewSpec, out_size: Sequence[int]) -> list[ViewStep]:
        # Crops are spatial and the same for every frame of a clip; in time a view spans
        # spec.time_scale of the clip, resampled to its length (1: the whole clip).
        return [
            ViewOp(views.random_temporal_crop, {"scale": spec.time_scale}, geometric=True),
            self.crop_step(spec, out_size, flip_axes=[2], fixed_axes=[TIME_AXIS]),
            self.jitter_step(spec),
            ViewOp(views.random_grayscale, {"p": spec.grayscale}),
            ViewOp(views.random_blur, {"p": spec.blur, "axes": (1, 2)}),
            ViewOp(views.random_noise, {"std": spec.noise}),
        ]

    def view_size(
        self, sample_size: Sequence[int], fraction: float, multiple: Sequence[int]
    ) -> list[int]:
        """Views shrink in space only: every view keeps the clip's full length in time."""
        spatial = super().view_size(sample_size[1:], fraction, multiple[1:])
        return [int(sample_size[TIME_AXIS]), *spatial]

    def token_mask(
        self,
        batch_size: int,
        tokens: Tokens,
        ratio: float,
        generator: torch.Generator,
        valid: Tensor | None = None,
    ) -> Tensor:
        """Tube masking (VideoMAE): one spatial mask repeated over every temporal token; with
        ``valid``, a tube is valid where every frame's token is."""
        if tokens.grid is None:
            return super().token_mask(batch_size, tokens, ratio, generator, valid)
        steps, height, width = tokens.grid
        if valid is not None:
            valid = valid.view(batch_size, steps, height * width).all(dim=1)
        spatial = random_token_mask(
            batch_size, height * width, ratio, generator, tokens.x.device, valid
        )
        return spatial.unsqueeze(1).expand(-1, steps, -1).reshape(batch_size, -1)

    def block_extents(
        self,
        tokens: Tokens,
        scale: tuple[float, float],
        aspect: tuple[float, float],
        rng: np.random.Generator,
    ) -> tuple[int, ...]:
        """Tubes (V-JEPA): a spatial block of ``scale`` of each frame's tokens, over every
        temporal token."""
        if tokens.grid is None:
            return super().block_extents(tokens, scale, aspect, rng)
        steps, height, width = tokens.grid
        return (steps, *block_extents((height, width), scale, aspect, rng))
