"""Patchify, normalised-patch targets and the grid tokenizer of image2d, volume3d and video."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import antialiased_bicubic_half

from fmcore.errors import ConfigError
from fmcore.modalities.base import TokenizerSettings
from fmcore.modalities.grid import (
    GridTokenizer,
    masked_mse,
    normalized_patches,
    patchify,
    sincos_table,
)
from fmcore.modalities.image2d import Image2D
from fmcore.modalities.video import Video
from fmcore.modalities.volume3d import Volume3D


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6) -> None:
    """Max-abs-error check (cheaper to import than torch.testing)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= atol, f"max abs error {error:.3g} > {atol:.3g}"


def patchify_loop(x: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """Reference: patches in raster order over the grid, each flattened (*patch, C) channel-last."""
    batch, channels, *spatial = x.shape
    grid = [s // p for s, p in zip(spatial, patch, strict=True)]
    out = []
    for b in range(batch):
        tokens = []
        for cell in itertools.product(*(range(g) for g in grid)):
            values = []
            for offset in itertools.product(*(range(p) for p in patch)):
                index = tuple(c * p + o for c, p, o in zip(cell, patch, offset, strict=True))
                for c in range(channels):
                    values.append(x[(b, c, *index)])
            tokens.append(values)
        out.append(tokens)
    return np.array(out)


# --------------------------------------------------------------------------- patchify


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((2, 3, 16, 24), (4, 8)),  # non-square patch and grid: an axis mix-up cannot pass
        ((1, 2, 4, 8, 12), (2, 4, 3)),  # 3D with a different patch size per axis
    ],
)
def test_patchify_matches_explicit_loop(shape, patch):
    x = torch.rand(*shape, generator=gen(0), dtype=torch.float64)
    got = patchify(x, patch)
    expected = patchify_loop(x.numpy(), patch)
    grid = [s // p for s, p in zip(shape[2:], patch, strict=True)]
    assert got.shape == (shape[0], math.prod(grid), shape[1] * math.prod(patch))
    np.testing.assert_array_equal(got.numpy(), expected)


def test_normalized_patches_zero_mean_unit_unbiased_variance():
    x = torch.rand(2, 3, 16, 16, generator=gen(1), dtype=torch.float64)
    got = normalized_patches(x, (8, 8)).numpy()
    raw = patchify_loop(x.numpy(), (8, 8))
    mean = raw.mean(axis=-1, keepdims=True)
    var = raw.var(axis=-1, ddof=1, keepdims=True)
    np.testing.assert_allclose(got, (raw - mean) / np.sqrt(var + 1e-6), atol=1e-12)
    np.testing.assert_allclose(got.mean(axis=-1), 0.0, atol=1e-12)
    # eps = 1e-6 against a patch variance of ~1/12
    np.testing.assert_allclose(got.var(axis=-1, ddof=1), 1.0, atol=1e-4)


# --------------------------------------------------------------------------- tokenizers


def build(modality, sample_size, channels, **options) -> GridTokenizer:
    settings = TokenizerSettings(
        embed_dim=16, sample_size=sample_size, channels=channels, options=options
    )
    torch.manual_seed(0)
    return modality.build_tokenizer(settings)


CASES = [
    # modality, sample (C, *S), options, grid, patch
    (Image2D(), (3, 32, 32), {"patch_size": 8}, (4, 4), (8, 8)),
    (Volume3D(), (1, 16, 16, 16), {"patch_size": 8}, (2, 2, 2), (8, 8, 8)),
    (Video(), (3, 4, 32, 32), {"patch_size": 8, "tubelet": 2}, (2, 4, 4), (2, 8, 8)),
]


@pytest.mark.parametrize(("modality", "sample", "options", "grid", "patch"), CASES)
def test_tokenizer_shapes(modality, sample, options, grid, patch):
    tokenizer = build(modality, sample[1:], sample[0], **options)
    x = torch.rand(2, *sample, generator=gen(2))
    tokens = tokenizer(x)
    n = math.prod(grid)
    assert tokens.grid == grid
    assert tokens.x.shape == (2, n, 16)
    assert tokens.pos.shape == (1, n, 16)
    assert tokenizer.size_multiple == patch
    assert tokenizer.target_dim == sample[0] * math.prod(patch)
    target = tokenizer.reconstruction_target(x, tokens)
    assert target.shape == (2, n, tokenizer.target_dim)
    # at the native grid the positional embedding is the learned one itself
    assert tokens.pos is tokenizer.pos_embed


@pytest.mark.parametrize(("modality", "sample", "options", "grid", "patch"), CASES)
def test_token_order_matches_patchify_order(modality, sample, options, grid, patch):
    # token n must embed patch n of patchify (the reconstruction target of token n)
    tokenizer = build(modality, sample[1:], sample[0], **options)
    x = torch.rand(2, *sample, generator=gen(3))
    with torch.no_grad():
        tokens = tokenizer(x)
        weight = tokenizer.proj.weight  # (D, C, *patch)
        nd = weight.dim() - 2
        flat = weight.permute(0, *range(2, 2 + nd), 1).reshape(weight.shape[0], -1)
        expected = patchify(x, patch) @ flat.T + tokenizer.proj.bias
    assert_close(tokens.x, expected, atol=1e-5)


def test_image_positional_embedding_interpolated_for_smaller_view():
    tokenizer = build(Image2D(), (32, 32), 3, patch_size=8)
    tokens = tokenizer(torch.rand(2, 3, 16, 16, generator=gen(4)))
    assert tokens.grid == (2, 2)
    assert tokens.x.shape == (2, 4, 16)
    assert tokens.pos.shape == (1, 4, 16)
    native = tokenizer.pos_embed.detach().reshape(4, 4, 16).double().numpy()
    m = antialiased_bicubic_half(4)
    expected = np.einsum("ih,jw,hwd->ijd", m, m, native).reshape(1, 4, 16)
    np.testing.assert_allclose(tokens.pos.detach().numpy(), expected, atol=1e-6)
    # a non-native, non-half grid still gets the right shape
    assert tokenizer(torch.rand(1, 3, 24, 40)).pos.shape == (1, 15, 16)


def test_input_not_a_multiple_of_the_patch_is_refused():
    tokenizer = build(Image2D(), (32, 32), 3, patch_size=8)
    with pytest.raises(ValueError, match=r"\(30, 32\) is not a multiple of the patch \(8, 8\)"):
        tokenizer(torch.rand(1, 3, 30, 32))


def test_volume_positional_embedding_interpolated_for_smaller_view():
    tokenizer = build(Volume3D(), (32, 32, 32), 1, patch_size=8)
    tokens = tokenizer(torch.rand(1, 1, 16, 16, 16, generator=gen(5)))
    assert tokens.grid == (2, 2, 2)
    assert tokens.pos.shape == (1, 8, 16)
    # trilinear 2x downsampling with align_corners=False is the mean of each 2x2x2 block
    native = tokenizer.pos_embed.detach().reshape(4, 4, 4, 16).numpy()
    expected = native.reshape(2, 2, 2, 2, 2, 2, 16).mean(axis=(1, 3, 5)).reshape(1, 8, 16)
    np.testing.assert_allclose(tokens.pos.detach().numpy(), expected, atol=1e-6)


def test_video_positional_embedding_interpolated_for_smaller_view():
    tokenizer = build(Video(), (4, 32, 32), 3, patch_size=8, tubelet=2)
    tokens = tokenizer(torch.rand(1, 3, 4, 16, 16, generator=gen(6)))
    assert tokens.grid == (2, 2, 2)
    assert tokens.pos.shape == (1, 8, 16)
    # time keeps its 2 steps; space averages 2x2 blocks
    native = tokenizer.pos_embed.detach().reshape(2, 4, 4, 16).numpy()
    expected = native.reshape(2, 2, 2, 2, 2, 16).mean(axis=(2, 4)).reshape(1, 8, 16)
    np.testing.assert_allclose(tokens.pos.detach().numpy(), expected, atol=1e-6)


def test_sample_size_not_multiple_of_patch_is_explained():
    with pytest.raises(ValueError, match=r"not a multiple of the patch \(8, 8\)"):
        build(Image2D(), (30, 32), 3, patch_size=8)
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        build(Video(), (5, 32, 32), 3, patch_size=8, tubelet=2)
    with pytest.raises(ValueError, match="differ in rank"):
        GridTokenizer(16, 3, (8, 8), (32, 32, 32))


def test_masked_mse_counts_masked_tokens_only():
    target = torch.zeros(2, 3, 4)
    pred = torch.zeros(2, 3, 4)
    pred[0, 0] = 2.0  # masked: squared error 4
    pred[1, 2] = 1.0  # masked: squared error 1
    pred[0, 1] = 100.0  # visible: ignored
    mask = torch.tensor([[True, False, False], [False, False, True]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((4 + 1) / 2)


def test_sincos_table_on_a_hand_example() -> None:
    # grid (2, 3), 8 channels: 4 per axis, frequencies 1 and 1/100 (10000^(-1/2)), sin then cos.
    table = sincos_table((2, 3), 8)
    row, col = 1, 2
    expected = [
        math.sin(row),
        math.sin(row / 100),
        math.cos(row),
        math.cos(row / 100),
        math.sin(col),
        math.sin(col / 100),
        math.cos(col),
        math.cos(col / 100),
    ]
    assert table.shape == (6, 8)
    torch.testing.assert_close(table[row * 3 + col], torch.tensor(expected))
    # An uneven split leaves the last channels at zero: 10 channels over 3 axes use 6.
    uneven = sincos_table((2, 2, 2), 10)
    assert torch.all(uneven[:, 6:] == 0) and torch.all(uneven[-1, :6] != 0)


def test_sincos_positional_embedding_is_fixed_and_learned_is_small() -> None:
    fixed = GridTokenizer(16, 1, (4, 4), (8, 12), positional="sincos")
    assert not fixed.pos_embed.requires_grad
    torch.testing.assert_close(fixed.pos_embed[0], sincos_table((2, 3), 16))
    learned = GridTokenizer(16, 1, (4, 4), (8, 12))
    assert learned.pos_embed.requires_grad and float(learned.pos_embed.std()) < 0.05
    with pytest.raises(ConfigError, match="pos_embed=rope"):
        GridTokenizer(16, 1, (4, 4), (8, 12), positional="rope")
