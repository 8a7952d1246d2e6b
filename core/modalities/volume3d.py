"""volume3d: (C, D, H, W) volumes: 3D patches, normalised-voxel target, 3D crops and flips."""

from __future__ import annotations

from collections.abc import Sequence

from fmcore.modalities import views
from fmcore.modalities.base import ViewOp, ViewSpec, ViewStep
from fmcore.modalities.grid import GridModality


class Volume3D(GridModality):
    name = "volume3d"
    layout = "(C, D, H, W)"

    def patch_shape(self, options: dict) -> tuple[int, ...]:
        patch = int(options.get("patch_size", 16))
        return (patch, patch, patch)

    def view_steps(self, spec: ViewSpec, out_size: Sequence[int]) -> list[ViewStep]:
        # Any anatomical axis may be mirrored: views must not teach left/right or up/down.
        return [
            self.crop_step(spec, out_size, flip_axes=[0, 1, 2]),
            self.jitter_step(spec),
            ViewOp(views.random_blur, {"p": spec.blur, "axes": (0, 1, 2)}),
            ViewOp(views.random_noise, {"std": spec.noise}),
        ]
