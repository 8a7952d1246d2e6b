"""image2d: (C, H, W) images: 2D patches, normalised-pixel target, 2D crops and colour views."""

from __future__ import annotations

from collections.abc import Sequence

from fmcore.modalities import views
from fmcore.modalities.base import ViewOp, ViewSpec, ViewStep
from fmcore.modalities.grid import GridModality


class Image2D(GridModality):
    name = "image2d"
    layout = "(C, H, W)"

    def patch_shape(self, options: dict) -> tuple[int, ...]:
        patch = int(options.get("patch_size", 16))
        return (patch, patch)

    def view_steps(self, spec: ViewSpec, out_size: Sequence[int]) -> list[ViewStep]:
        return [
            self.crop_step(spec, out_size, flip_axes=[1]),
            self.jitter_step(spec),
            ViewOp(views.random_grayscale, {"p": spec.grayscale}),
            ViewOp(views.random_blur, {"p": spec.blur, "axes": (0, 1)}),
            ViewOp(views.random_solarize, {"p": spec.solarize}),
            ViewOp(views.random_noise, {"std": spec.noise}),
        ]
