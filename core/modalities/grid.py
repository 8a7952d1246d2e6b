"""Patch tokenizer and reconstruction target shared by the grid modalities.

image2d uses 2D patches, volume3d 3D patches and video 3D tubelets (time x height x width): the
same strided convolution, positional embedding (learned, or MAE's fixed sine-cosine table;
interpolated when a view's token grid differs from the sample's) and normalised-patch target
serve all three.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmcore.errors import ConfigError
from fmcore.modalities import views
from fmcore.modalities.base import (
    Modality,
    Tokenizer,
    TokenizerSettings,
    Tokens,
    ViewOp,
    ViewSpec,
)


def patchify(x: Tensor, patch: Sequence[int]) -> Tensor:
    """(B, C, *S) -> (B, N, C * prod(patch)), patches in raster order, values channel-last."""
    batch, channels, *spatial = x.shape
    nd = len(spatial)
    grid = [s // p for s, p in zip(spatial, patch, strict=True)]
    shape = [batch, channels]
    for g, p in zip(grid, patch, strict=True):
        shape += [g, p]
    x = x.reshape(shape)
    # (B, C, g0, p0, g1, p1, ...) -> (B, g0, g1, ..., p0, p1, ..., C)
    grid_axes = [2 + 2 * i for i in range(nd)]
    patch_axes = [3 + 2 * i for i in range(nd)]
    x = x.permute(0, *grid_axes, *patch_axes, 1)
    return x.reshape(batch, math.prod(grid), channels * math.prod(patch))


def normalized_patches(x: Tensor, patch: Sequence[int], eps: float = 1e-6) -> Tensor:
    """MAE's per-patch normalised pixel target: each patch to zero mean and unit variance."""
    patches = patchify(x, patch)
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()


POSITIONAL_EMBEDDINGS = ("learned", "sincos")


def resample_grid_embedding(
    pos: Tensor, old_grid: Sequence[int], new_grid: Sequence[int]
) -> Tensor:
    """(1, prod(old_grid), D) -> (1, prod(new_grid), D) in float32: bicubic with antialiasing in
    2D, as timm's ``resample_abs_pos_embed`` (loading) and ``dynamic_img_size`` (run time) do;
    trilinear in 3D. The one resampling of a positional table in fmcore."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos
    grid = pos.float().reshape(1, *old_grid, -1).movedim(-1, 1)
    if len(new_grid) == 2:
        grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True)
    else:
        grid = F.interpolate(grid, size=new_grid, mode="trilinear", align_corners=False)
    return grid.movedim(1, -1).reshape(1, math.prod(new_grid), -1).to(pos.dtype)


def sincos_table(grid: Sequence[int], dim: int) -> Tensor:
    """Fixed sine-cosine positional embedding (prod(grid), dim) of a token grid in raster order,
    as MAE, MoCo v3 and I-JEPA use: each axis gets an equal even share of the channels, half
    sines and half cosines of its coordinate at frequencies 1 / 10000^(i / half); channels left
    over by an uneven split are zero."""
    per_axis = dim // (2 * len(grid)) * 2
    half = per_axis // 2
    if half == 0:
        raise ConfigError(f"embed_dim {dim} is too small for a sine-cosine table of a {grid} grid")
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for axis in coords:
        angles = axis.reshape(-1, 1) * omega  # (N, half)
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    return F.pad(table, (0, dim - table.shape[1])).float()


class GridTokenizer(Tokenizer):
    """Non-overlapping patches of a 2D or 3D grid embedded by one strided convolution.

    The positional embedding lives at the sample's native token grid and is resampled
    (:func:`resample_grid_embedding`, timm's antialiased bicubic in 2D) for views with a
    different grid, such as DINOv2's local crops. (Until December 2026 it was plain
    bicubic: a run resumed across that change sees slightly different tables for such views.)
    An input whose size is not a multiple of the patch is refused, not cropped.
    ``learned`` starts it at DINOv2's small random values (std 0.02), far below the patch
    embeddings, so a short run barely tells positions apart; ``sincos`` fixes it to MAE's
    sine-cosine table (not trained), whose unit amplitude gives every token its place from the
    first step.
    """

    def __init__(
        self,
        embed_dim: int,
        channels: int,
        patch: Sequence[int],
        sample_size: Sequence[int],
        positional: str = "learned",
    ) -> None:
        super().__init__()
        if len(patch) != len(sample_size):
            raise ConfigError(
                f"patch {tuple(patch)} and sample size {tuple(sample_size)} differ in rank"
            )
        for size, p in zip(sample_size, patch, strict=True):
            if size % p:
                raise ConfigError(
                    f"sample size {tuple(sample_size)} is not a multiple of the patch"
                    f" {tuple(patch)}:"
                    " change data.size or encoder.tokenizer.patch_size"
                )
        self.embed_dim = embed_dim
        self.channels = channels
        self.patch = tuple(int(p) for p in patch)
        self.native_grid = tuple(s // p for s, p in zip(sample_size, patch, strict=True))
        conv = nn.Conv2d if len(patch) == 2 else nn.Conv3d
        self.proj = conv(channels, embed_dim, kernel_size=self.patch, stride=self.patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.native_grid), embed_dim))
        if positional == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        elif positional == "sincos":
            self.pos_embed.data.copy_(sincos_table(self.native_grid, embed_dim).unsqueeze(0))
            self.pos_embed.requires_grad_(False)
        else:
            raise ConfigError(
                f"encoder.tokenizer.pos_embed={positional} is not one of"
                f" {', '.join(POSITIONAL_EMBEDDINGS)}"
            )

    @property
    def target_dim(self) -> int:
        return self.channels * math.prod(self.patch)

    @property
    def size_multiple(self) -> tuple[int, ...]:
        return self.patch

    def positional_embedding(self, grid: tuple[int, ...]) -> Tensor:
        """(1, prod(grid), D) positional embedding for a token grid."""
        return resample_grid_embedding(self.pos_embed, self.native_grid, grid)

    def forward(self, x: Tensor) -> Tokens:
        spatial = tuple(x.shape[2:])
        if any(size % patch for size, patch in zip(spatial, self.patch, strict=True)):
            raise ValueError(
                f"input of size {spatial} is not a multiple of the patch {self.patch}: resize or"
                " crop it to a multiple (the tokenizer does not drop the remainder)"
            )
        embedded = self.proj(x)  # (B, D, *grid)
        grid = tuple(embedded.shape[2:])
        tokens = embedded.flatten(2).transpose(1, 2)  # (B, N, D)
        return Tokens(x=tokens, pos=self.positional_embedding(grid), grid=grid)

    def reconstruction_target(self, x: Tensor, tokens: Tokens, normalize: bool = True) -> Tensor:
        return normalized_patches(x, self.patch) if normalize else patchify(x, self.patch)

    def valid_tokens(self, valid: Tensor) -> Tensor:
        """A patch holds data when at least half of its pixels do."""
        return patchify(valid, self.patch).mean(dim=-1) >= 0.5


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error per element over the masked tokens (B, N) only (MAE's loss on its
    targets; I-JEPA's on representations)."""
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1)


class GridModality(Modality):
    """What image2d, volume3d and video share: a patch tokenizer and the normalised-patch MSE.

    Subclasses say how ``encoder.tokenizer`` options become a patch shape, and their view steps
    (most begin with :meth:`crop_step` and :meth:`jitter_step`).
    """

    @staticmethod
    def crop_step(
        spec: ViewSpec,
        out_size: Sequence[int],
        flip_axes: Sequence[int],
        fixed_axes: Sequence[int] = (),
    ) -> ViewOp:
        """The random resized crop of ``spec`` (flips along ``flip_axes``, ``fixed_axes`` kept
        whole) to ``out_size``."""
        return ViewOp(
            views.random_resized_crop,
            {
                "out_size": out_size,
                "scale": spec.scale,
                "aspect": spec.aspect,
                "flip": spec.flip,
                "fixed_axes": fixed_axes,
                "flip_axes": flip_axes,
            },
            geometric=True,
        )

    @staticmethod
    def jitter_step(spec: ViewSpec) -> ViewOp:
        return ViewOp(views.intensity_jitter, {"p": spec.jitter, "strength": spec.jitter_strength})

    @abstractmethod
    def patch_shape(self, options: dict) -> tuple[int, ...]:
        """The patch (or tubelet) shape from the ``encoder.tokenizer`` options."""

    def build_tokenizer(self, settings: TokenizerSettings) -> GridTokenizer:
        return GridTokenizer(
            settings.embed_dim,
            settings.channels,
            self.patch_shape(settings.options),
            settings.sample_size,
            str(settings.options.get("pos_embed", "learned")),
        )

    def reconstruction_loss(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return masked_mse(pred, target, mask)
