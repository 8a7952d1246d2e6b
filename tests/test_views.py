"""Batched view operations of the grid modalities, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from fmcore.modalities import views
from fmcore.modalities.base import ViewSpec
from fmcore.modalities.image2d import Image2D
from fmcore.modalities.video import Video
from fmcore.modalities.volume3d import Volume3D

CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6) -> None:
    """Max-abs-error check (cheaper to import than torch.testing)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= atol, f"max abs error {error:.3g} > {atol:.3g}"


def expected_coordinate(centre: float, extent: float, size: int, out: int) -> np.ndarray:
    """Input pixel coordinate sampled by each output pixel (the documented box formula)."""
    i = np.arange(out)
    return (centre - extent / 2 + (i + 0.5) * extent / out) * size - 0.5


def interior(coords: np.ndarray, size: int) -> np.ndarray:
    return (coords >= 0) & (coords <= size - 1)


# --------------------------------------------------------------------------- crop_resize


def test_crop_resize_2d_ramps_follow_box_formula():
    height, width = 24, 32
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    # channel 0: value = column index, channel 1: value = row index
    image = torch.tensor(np.stack([cols, rows]), dtype=torch.float64)
    x = image.unsqueeze(0).repeat(2, 1, 1, 1)
    centres = torch.tensor([[0.45, 0.55], [0.3, 0.7]], dtype=torch.float64)  # (row, col)
    extents = torch.tensor([[0.5, 0.6], [0.4, 0.5]], dtype=torch.float64)
    out_h, out_w = 12, 20

    y = views.crop_resize(x, centres, extents, (out_h, out_w)).numpy()
    assert y.shape == (2, 2, out_h, out_w)

    for b in range(2):
        col_coord = expected_coordinate(centres[b, 1].item(), extents[b, 1].item(), width, out_w)
        row_coord = expected_coordinate(centres[b, 0].item(), extents[b, 0].item(), height, out_h)
        in_cols, in_rows = interior(col_coord, width), interior(row_coord, height)
        assert in_cols.sum() >= out_w - 2 and in_rows.sum() >= out_h - 2
        column_channel = y[b, 0][np.ix_(in_rows, in_cols)]
        row_channel = y[b, 1][np.ix_(in_rows, in_cols)]
        # the column ramp varies only along the output columns, the row ramp only along rows
        np.testing.assert_allclose(
            column_channel, np.broadcast_to(col_coord[in_cols], column_channel.shape), atol=1e-9
        )
        np.testing.assert_allclose(
            row_channel, np.broadcast_to(row_coord[in_rows][:, None], row_channel.shape), atol=1e-9
        )


def test_crop_resize_border_pixels_are_clamped():
    # Upsampling a box that touches the left edge asks for coordinates below 0: border padding.
    width = 8
    x = torch.arange(width, dtype=torch.float64).repeat(1, 1, 4, 1)  # (1, 1, 4, 8), value = column
    centres = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    extents = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    y = views.crop_resize(x, centres, extents, (4, 16))[0, 0, 0].numpy()
    coords = expected_coordinate(0.25, 0.5, width, 16)
    assert coords[0] < 0
    np.testing.assert_allclose(y, np.clip(coords, 0, width - 1), atol=1e-9)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_crop_resize_3d_ramp_along_each_axis(axis):
    size = (10, 14, 18)  # (D, H, W), all different so a swapped axis cannot pass
    ramp = np.broadcast_to(
        np.arange(size[axis], dtype=np.float64).reshape([-1 if a == axis else 1 for a in range(3)]),
        size,
    )
    x = torch.tensor(np.ascontiguousarray(ramp)).reshape(1, 1, *size)
    centres = torch.tensor([[0.4, 0.5, 0.55]], dtype=torch.float64)
    extents = torch.tensor([[0.5, 0.7, 0.8]], dtype=torch.float64)
    out = (6, 8, 10)

    y = views.crop_resize(x, centres, extents, out)[0, 0].numpy()
    assert y.shape == out

    coords = expected_coordinate(
        centres[0, axis].item(), extents[0, axis].item(), size[axis], out[axis]
    )
    keep = interior(coords, size[axis])
    assert keep.sum() >= out[axis] - 2
    expected = np.broadcast_to(coords.reshape([-1 if a == axis else 1 for a in range(3)]), out)
    selected = np.take(y, np.flatnonzero(keep), axis=axis)
    np.testing.assert_allclose(
        selected, np.take(expected, np.flatnonzero(keep), axis=axis), atol=1e-9
    )


def test_crop_resize_flips_mirror_the_output_2d():
    x = torch.rand(3, 2, 20, 24, generator=gen(1))
    centres = torch.tensor([[0.5, 0.4], [0.6, 0.5], [0.45, 0.55]])
    extents = torch.tensor([[0.7, 0.6], [0.5, 0.9], [0.8, 0.8]])
    flips = torch.tensor([[False, True], [True, False], [True, True]])
    plain = views.crop_resize(x, centres, extents, (10, 12))
    flipped = views.crop_resize(x, centres, extents, (10, 12), flips)
    assert_close(flipped[0], plain[0].flip(-1), atol=1e-5)
    assert_close(flipped[1], plain[1].flip(-2), atol=1e-5)
    assert_close(flipped[2], plain[2].flip(-2, -1), atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_crop_resize_flips_mirror_the_output_3d(axis):
    x = torch.rand(1, 1, 8, 10, 12, generator=gen(2))
    centres = torch.tensor([[0.45, 0.5, 0.55]])
    extents = torch.tensor([[0.6, 0.7, 0.8]])
    flips = torch.zeros(1, 3, dtype=torch.bool)
    flips[0, axis] = True
    plain = views.crop_resize(x, centres, extents, (6, 6, 6))
    flipped = views.crop_resize(x, centres, extents, (6, 6, 6), flips)
    assert_close(flipped, plain.flip(2 + axis), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 12, 16), (2, 1, 6, 8, 10)])
def test_crop_resize_full_box_is_identity(shape):
    x = torch.rand(*shape, generator=gen(3))
    nd = len(shape) - 2
    centres = torch.full((shape[0], nd), 0.5)
    extents = torch.ones(shape[0], nd)
    y = views.crop_resize(x, centres, extents, shape[2:])
    assert_close(y, x, atol=1e-6)


# --------------------------------------------------------------------------- crop boxes


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sample_crop_boxes_inside_sample_with_area_and_aspect_in_range(spatial_dims):
    scale, aspect = (0.1, 0.9), (3 / 4, 4 / 3)
    centres, extents = views.sample_crop_boxes(2000, spatial_dims, scale, aspect, gen(4), CPU)
    assert centres.shape == extents.shape == (2000, spatial_dims)
    assert bool((extents > 0).all()) and bool((extents <= 1).all())
    eps = 1e-6
    assert bool((centres - extents / 2 >= -eps).all())
    assert bool((centres + extents / 2 <= 1 + eps).all())
    # a box's offset in the room it has, (c - e/2) / (1 - e), is uniform in [0, 1] on every axis
    for axis in range(spatial_dims):
        room = 1 - extents[:, axis]
        offset = (centres[:, axis] - extents[:, axis] / 2)[room > 0.05] / room[room > 0.05]
        assert offset.numel() > 500
        assert offset.min() < 0.01 and offset.max() > 0.99
        assert abs(offset.mean().item() - 0.5) < 0.03

    area = extents.prod(dim=1)
    unclamped = (extents < 1).all(dim=1)
    assert unclamped.float().mean() > 0.5  # the check below covers most boxes
    assert bool((area[unclamped] >= scale[0] * (1 - 1e-5)).all())
    assert bool((area[unclamped] <= scale[1] * (1 + 1e-5)).all())
    assert bool((area <= scale[1] * (1 + 1e-5)).all())  # clamping only shrinks a box
    # the extent of each free axis relative to the first one lies in the aspect range
    ratios = extents[unclamped, 1:] / extents[unclamped, :1]
    assert bool((ratios >= aspect[0] * (1 - 1e-5)).all())
    assert bool((ratios <= aspect[1] * (1 + 1e-5)).all())
    # ... and spans it (log-uniform draws reach both ends)
    assert ratios.min() < aspect[0] * 1.03 and ratios.max() > aspect[1] / 1.03


def test_sample_crop_boxes_area_is_uniform_in_scale():
    _, extents = views.sample_crop_boxes(4000, 2, (0.2, 0.4), (1.0, 1.0), gen(5), CPU)
    # aspect 1: square boxes, never clamped, area = extent^2 uniform in [0.2, 0.4]
    assert_close(extents[:, 0], extents[:, 1])
    area = extents.prod(dim=1)
    assert abs(area.mean().item() - 0.3) < 0.005
    assert abs(area.var().item() - 0.2**2 / 12) < 0.0005


def test_sample_crop_boxes_fixed_axis_kept_whole():
    scale = (0.2, 0.6)
    centres, extents = views.sample_crop_boxes(500, 3, scale, (0.8, 1.25), gen(6), CPU, [0])
    assert bool((extents[:, 0] == 1).all())
    assert_close(centres[:, 0], torch.full((500,), 0.5))
    free_area = extents[:, 1:].prod(dim=1)
    unclamped = (extents[:, 1:] < 1).all(dim=1)
    assert bool((free_area[unclamped] >= scale[0] * (1 - 1e-5)).all())
    assert bool((free_area[unclamped] <= scale[1] * (1 + 1e-5)).all())


def test_sample_crop_boxes_deterministic_for_seed():
    a = views.sample_crop_boxes(16, 3, (0.3, 1.0), (0.75, 1.33), gen(7), CPU)
    b = views.sample_crop_boxes(16, 3, (0.3, 1.0), (0.75, 1.33), gen(7), CPU)
    c = views.sample_crop_boxes(16, 3, (0.3, 1.0), (0.75, 1.33), gen(8), CPU)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# --------------------------------------------------------------------------- random_resized_crop


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_random_resized_crop_video_keeps_frame_order(flip):
    frames, height, width = 6, 16, 20
    t = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1)
    clip = t.expand(3, 2, frames, height, width).contiguous()
    y = views.random_resized_crop(
        clip, (frames, 8, 8), (0.2, 0.8), (0.75, 4 / 3), flip, gen(9), [0], [2]
    )
    assert y.shape == (3, 2, frames, 8, 8)
    assert_close(y, t.expand_as(y), atol=1e-5)

    # every frame of a clip gets the same spatial crop
    columns = torch.arange(width, dtype=torch.float32).view(1, 1, 1, 1, width)
    clip = (100 * t + columns).expand(3, 2, frames, height, width).contiguous()
    y = views.random_resized_crop(
        clip, (frames, 8, 8), (0.2, 0.8), (0.75, 4 / 3), flip, gen(9), [0], [2]
    )
    spatial = y - 100 * t
    assert_close(spatial, spatial[:, :, :1].expand_as(spatial), atol=1e-4)


def test_random_resized_crop_full_scale_flips_last_axis_by_default():
    x = torch.rand(2, 3, 12, 16, generator=gen(10))
    kept = views.random_resized_crop(x, (12, 16), (1.0, 1.0), (1.0, 1.0), 0.0, gen(11))
    assert_close(kept, x, atol=1e-6)
    flipped = views.random_resized_crop(x, (12, 16), (1.0, 1.0), (1.0, 1.0), 1.0, gen(11))
    assert_close(flipped, x.flip(-1), atol=1e-6)


# --------------------------------------------------------------------------- gaussian blur


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def test_gaussian_blur_interior_matches_explicit_2d_convolution():
    sigmas = [0.6, 1.0, 1.7]
    radius = math.ceil(3 * max(sigmas))
    x = torch.rand(3, 2, 20, 24, generator=gen(12), dtype=torch.float64)
    y = views.gaussian_blur(x, torch.tensor(sigmas, dtype=torch.float64), axes=(0, 1)).numpy()
    xn = x.numpy()
    height, width = xn.shape[2:]
    for b, sigma in enumerate(sigmas):
        k = gaussian_kernel(sigma, radius)
        kernel2d = np.outer(k, k)
        expected = np.zeros((2, height - 2 * radius, width - 2 * radius))
        for u in range(2 * radius + 1):
            for v in range(2 * radius + 1):
                window = xn[b, :, u : u + height - 2 * radius, v : v + width - 2 * radius]
                expected += kernel2d[u, v] * window
        got = y[b, :, radius : height - radius, radius : width - radius]
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_gaussian_blur_matches_scipy_mirror_borders():
    # torch's 'reflect' padding (d c b | a b c d) is scipy's 'mirror' mode, not its 'reflect'.
    sigmas = [0.5, 1.3]
    radius = math.ceil(3 * max(sigmas))
    x = torch.rand(2, 1, 9, 11, 13, generator=gen(13), dtype=torch.float64)
    y = views.gaussian_blur(x, torch.tensor(sigmas, dtype=torch.float64), axes=(0, 1, 2))
    for b, sigma in enumerate(sigmas):
        expected = x[b, 0].numpy()
        for axis in range(3):
            expected = gaussian_filter1d(
                expected, sigma, axis=axis, mode="mirror", truncate=radius / sigma
            )
        np.testing.assert_allclose(y[b, 0].numpy(), expected, atol=1e-12)


def test_gaussian_blur_only_along_given_axes():
    # video blurs (H, W) only: every frame is blurred on its own
    sigma = torch.tensor([1.2, 0.7], dtype=torch.float64)
    clip = torch.rand(2, 3, 4, 12, 14, generator=gen(14), dtype=torch.float64)
    y = views.gaussian_blur(clip, sigma, axes=(1, 2))
    for t in range(4):
        frame = views.gaussian_blur(clip[:, :, t], sigma, axes=(0, 1))
        assert_close(y[:, :, t], frame, atol=1e-12)


def test_gaussian_blur_sigma_is_per_sample():
    image = torch.rand(1, 1, 16, 16, generator=gen(15))
    x = image.repeat(2, 1, 1, 1)
    y = views.gaussian_blur(x, torch.tensor([0.5, 2.0]), axes=(0, 1))
    assert not torch.allclose(y[0], y[1], atol=1e-3)
    # the stronger blur leaves less variation
    assert y[1].std() < y[0].std() < image.std()


def test_gaussian_blur_constant_stays_constant_and_interior_sum_is_kept():
    x = torch.full((2, 3, 10, 12), 0.37)
    y = views.gaussian_blur(x, torch.tensor([0.8, 1.9]), axes=(0, 1))
    assert_close(y, x, atol=1e-6)
    # small axis: the kernel is cut at the size of the axis and still sums to one
    x = torch.full((1, 1, 3, 40), 0.5)
    assert_close(views.gaussian_blur(x, torch.tensor([2.0]), (0, 1)), x)

    bump = torch.zeros(2, 1, 32, 32, dtype=torch.float64)
    bump[:, :, 14:18, 13:19] = torch.rand(2, 1, 4, 6, generator=gen(16), dtype=torch.float64)
    y = views.gaussian_blur(bump, torch.tensor([1.0, 1.5], dtype=torch.float64), axes=(0, 1))
    assert_close(y.sum(dim=(1, 2, 3)), bump.sum(dim=(1, 2, 3)))


def test_random_blur_p0_is_identity():
    x = torch.rand(2, 3, 8, 8, generator=gen(17))
    assert torch.equal(views.random_blur(x, 0.0, gen(0), axes=(0, 1)), x)


# --------------------------------------------------------------------------- photometric


def test_intensity_jitter_p0_identity_and_p1_changes_within_unit_range():
    x = torch.rand(4, 3, 8, 8, generator=gen(18))
    assert torch.equal(views.intensity_jitter(x, 0.0, 0.4, gen(0)), x)
    y = views.intensity_jitter(x, 1.0, 0.4, gen(0))
    assert y.shape == x.shape
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    for b in range(4):
        assert not torch.allclose(y[b], x[b])


def test_intensity_jitter_single_channel_is_affine_brightness_contrast():
    # One channel: out = b*c*(x - mean x) + b*mean x, b and c in [1-s, 1+s] (no clamping here).
    strength = 0.2
    x = 0.4 + 0.2 * torch.rand(3, 1, 6, 6, generator=gen(19), dtype=torch.float64)
    y = views.intensity_jitter(x, 1.0, strength, gen(20))
    for b in range(3):
        xs, ys = x[b].flatten(), y[b].flatten()
        brightness = ys.mean() / xs.mean()
        slope = ((ys - ys.mean()) * (xs - xs.mean())).sum() / ((xs - xs.mean()) ** 2).sum()
        contrast = slope / brightness
        assert 1 - strength <= brightness <= 1 + strength
        assert 1 - strength <= contrast <= 1 + strength
        assert_close(ys, slope * (xs - xs.mean()) + ys.mean())


def test_grayscale_equals_luma_in_every_channel():
    x = torch.rand(2, 3, 5, 7, generator=gen(21), dtype=torch.float64)
    y = views.random_grayscale(x, 1.0, gen(0))
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        assert_close(y[:, c], luma)
    assert torch.equal(views.random_grayscale(x, 0.0, gen(0)), x)
    single = torch.rand(2, 1, 5, 7, generator=gen(22))
    assert torch.equal(views.random_grayscale(single, 1.0, gen(0)), single)
    # video: (B, 3, T, H, W)
    clip = torch.rand(1, 3, 2, 4, 4, generator=gen(23), dtype=torch.float64)
    y = views.random_grayscale(clip, 1.0, gen(0))
    assert_close(y[:, 1], 0.299 * clip[:, 0] + 0.587 * clip[:, 1] + 0.114 * clip[:, 2])


def test_solarize_inverts_values_at_or_above_half():
    x = torch.tensor([0.0, 0.2, 0.49, 0.5, 0.7, 1.0]).view(1, 1, 1, 6)
    y = views.random_solarize(x, 1.0, gen(0))
    expected = torch.tensor([0.0, 0.2, 0.49, 0.5, 0.3, 0.0]).view(1, 1, 1, 6)
    assert_close(y, expected)
    assert torch.equal(views.random_solarize(x, 0.0, gen(0)), x)
    # the threshold itself is inverted (>=), shown with a threshold where 1 - t != t
    y = views.random_solarize(torch.tensor([0.29, 0.3, 0.8]).view(1, 1, 1, 3), 1.0, gen(0), 0.3)
    assert_close(y, torch.tensor([0.29, 0.7, 0.2]).view(1, 1, 1, 3))


def test_random_noise_has_requested_std():
    x = torch.zeros(4, 1, 64, 64)
    assert torch.equal(views.random_noise(x, 0.0, gen(0)), x)
    noise = views.random_noise(x, 0.1, gen(0))
    assert abs(noise.std().item() - 0.1) < 0.005
    assert abs(noise.mean().item()) < 0.005


# --------------------------------------------------------------------------- modality augment

FULL_SPEC = ViewSpec(
    scale=(0.3, 1.0), flip=0.5, jitter=0.8, grayscale=0.5, blur=0.5, solarize=0.5, noise=0.01
)


@pytest.mark.parametrize(
    ("modality", "shape", "out_size"),
    [
        (Image2D(), (3, 3, 32, 32), (16, 24)),
        (Volume3D(), (2, 1, 16, 16, 16), (8, 8, 8)),
        (Video(), (2, 3, 4, 32, 32), (4, 16, 16)),
    ],
)
def test_augment_size_and_determinism(modality, shape, out_size):
    batch = torch.rand(*shape, generator=gen(24))
    a = modality.augment(batch, FULL_SPEC, out_size, gen(25))
    b = modality.augment(batch, FULL_SPEC, out_size, gen(25))
    c = modality.augment(batch, FULL_SPEC, out_size, gen(26))
    assert a.shape == (shape[0], shape[1], *out_size)
    assert a.dtype == batch.dtype
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


def test_video_augment_keeps_frame_order():
    frames = 4
    t = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1) / frames
    clip = t.expand(2, 3, frames, 16, 16).contiguous()
    spec = ViewSpec(scale=(0.2, 1.0), flip=0.5, jitter=0.0)
    y = Video().augment(clip, spec, (frames, 8, 8), gen(27))
    assert_close(y, t.expand_as(y), atol=1e-5)


def test_image2d_views_are_its_steps_in_order_the_view_functions_called_by_hand():
    x = torch.rand(4, 3, 16, 16, generator=gen(1))
    spec = ViewSpec(scale=(0.5, 1.0), flip=0.5, jitter=1.0, grayscale=0.5, solarize=0.5, noise=1.0)
    steps = Image2D().view_steps(spec, [8, 8])
    assert [repr(step).split("(")[0] for step in steps] == [
        "random_resized_crop",
        "intensity_jitter",
        "random_grayscale",
        "random_blur",
        "random_solarize",
        "random_noise",
    ]
    g = gen(2)
    by_hand = views.random_resized_crop(x, [8, 8], (0.5, 1.0), spec.aspect, 0.5, g, flip_axes=[1])
    by_hand = views.intensity_jitter(by_hand, 1.0, spec.jitter_strength, g)
    by_hand = views.random_grayscale(by_hand, 0.5, g)
    by_hand = views.random_blur(by_hand, 0.0, g, axes=(0, 1))
    by_hand = views.random_solarize(by_hand, 0.5, g)
    by_hand = views.random_noise(by_hand, 1.0, g)
    assert torch.equal(Image2D().augment(x, spec, [8, 8], gen(2)), by_hand)


def test_a_modality_adds_a_view_option_and_a_step_without_a_core_edit():
    from dataclasses import dataclass

    from fmcore.api import ConfigError, ViewOp
    from fmcore.view_maker import ViewMaker

    def random_quarter_turn(x: torch.Tensor, p: float, generator: torch.Generator):
        turn = torch.rand(x.shape[0], generator=generator) < p
        return torch.where(turn.view(-1, 1, 1, 1), x.rot90(1, dims=(2, 3)), x)

    @dataclass(frozen=True)
    class TurningSpec(ViewSpec):
        quarter_turn: float = 0.0

    class TurningImages(Image2D):
        name = "turning_images"
        view_spec = TurningSpec

        def view_steps(self, spec, out_size):
            return [
                *super().view_steps(spec, out_size),
                ViewOp(random_quarter_turn, {"p": spec.quarter_turn}),
            ]

    plain = {"flip": 0.0, "jitter": 0.0, "scale": (1.0, 1.0), "aspect": (1.0, 1.0)}
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    maker = ViewMaker(TurningImages(), (4, 4), (1, 1), overrides={"quarter_turn": 1.0})
    (view,) = maker(x, TurningSpec(**plain), gen())
    assert torch.equal(view, x.rot90(1, dims=(2, 3)))  # the full-box crop is exact
    with pytest.raises(ConfigError, match="quarter_turn"):  # plain images do not know it
        ViewMaker(Image2D(), (4, 4), (1, 1), overrides={"quarter_turn": 1.0})


def test_point_views_match_the_crop_then_xyz_steps_written_out():
    from fmcore.modalities.points import (
        Points,
        crop_indices,
        gather_points,
        normalize_unit_sphere,
        random_flip,
        random_scale_rotate,
    )

    clouds = torch.rand(3, 64, 5, generator=gen(3))  # xyz + two feature channels
    spec = ViewSpec(scale=(0.5, 1.0), flip=0.5, jitter=1.0, jitter_strength=0.4, noise=1.0)
    g = gen(4)
    view = gather_points(clouds, crop_indices(clouds[..., :3], spec.scale, 32, g))
    xyz = normalize_unit_sphere(view[..., :3])
    xyz = random_flip(xyz, 0.5, g)
    xyz = random_scale_rotate(xyz, 1.0, 0.2, g)
    xyz = views.random_noise(xyz, 1.0, g)
    expected = torch.cat([normalize_unit_sphere(xyz), view[..., 3:]], dim=-1)
    assert torch.equal(Points().augment(clouds, spec, [32], gen(4)), expected)


def test_temporal_crops_take_a_window_of_the_clip_resampled_to_its_length() -> None:
    """Frame t of every clip holds the value t: a cropped view must show a run of consecutive
    frames, each repeated as often as resampling a window of L frames to 16 says (frame
    start + floor(k L / 16) at position k), with L within the scale asked for."""
    frames = 16
    clips = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1)
    clips = clips.expand(64, 3, frames, 4, 4).clone()
    cropped = views.random_temporal_crop(clips, (0.25, 0.75), gen())
    spans = set()
    for view in cropped:
        shown = view[0, :, 0, 0].long().tolist()
        assert (view == view[:1, :, :1, :1]).all()  # every channel and pixel of a frame alike
        start, span = shown[0], shown[-1] - shown[0] + 1
        assert 4 <= span <= 12 and start + span <= frames
        assert shown == [start + (k * span) // frames for k in range(frames)]
        spans.add(span)
    assert len(spans) > 3  # the window's length is drawn per clip
    assert views.random_temporal_crop(clips, (1.0, 1.0), gen()) is clips


def test_video_recipes_of_dinov2_and_simclr_crop_in_time_only_for_clips() -> None:
    from fmcore.config import compose, config_sources
    from fmcore.plugin_manager import registry

    sources = config_sources(registry())
    for method, view in (("dinov2", "local"), ("simclr_small", "global")):
        video = compose(["domain=video", f"method={method}"], sources)
        digits = compose(["domain=digits", f"method={method}"], sources)
        assert list(video.method.views[view].time_scale) == [0.5, 1.0]
        assert list(digits.method.views[view].time_scale) == [1.0, 1.0]


def test_a_valid_mask_follows_the_crops_and_flips_and_not_the_colours():
    """The mask carried through augment_with_valid equals the same crop of the mask as an
    image (a mask that is the image's own first channel), whatever the photometric steps do
    to the pixels; and the view itself is the one augment makes without a mask."""
    valid = torch.zeros(3, 1, 16, 16)
    valid[:, :, 4:12, 2:10] = 1.0
    x = torch.cat([valid, torch.rand(3, 2, 16, 16, generator=gen(0))], dim=1)
    spec = ViewSpec(scale=(0.3, 1.0), flip=0.5, jitter=1.0, grayscale=0.5, noise=0.1)
    view, carried = Image2D().augment_with_valid(x, valid, spec, [8, 8], gen(4))
    assert torch.equal(view, Image2D().augment(x, spec, [8, 8], gen(4)))
    geometric_only = ViewSpec(scale=(0.3, 1.0), flip=0.5, jitter=0.0)
    cropped = Image2D().augment(x, geometric_only, [8, 8], gen(4))
    assert torch.allclose(carried, cropped[:, :1], atol=1e-6)
    assert carried.min() >= 0 and carried.max() <= 1


def test_a_video_valid_mask_follows_the_temporal_crop():
    clip = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(2, 3, 8, 4, 4).contiguous() / 8
    valid = clip[:, :1].clone()  # a mask that differs per frame
    spec = ViewSpec(scale=(1.0, 1.0), flip=0.0, jitter=0.0, time_scale=(0.5, 0.5))
    view, carried = Video().augment_with_valid(clip, valid, spec, (8, 4, 4), gen(7))
    assert torch.allclose(carried, view[:, :1])


def test_collate_stacks_valid_masks_and_fills_a_missing_one_with_ones():
    from fmcore.domain import Sample
    from fmcore.engine.data import collate

    half = torch.zeros(1, 4, 4)
    half[..., :2] = 1
    batch, _ = collate([Sample(torch.rand(3, 4, 4), valid=half), Sample(torch.rand(3, 4, 4))])
    assert batch.valid.shape == (2, 1, 4, 4) and batch.valid.dtype == torch.uint8
    assert torch.equal(batch.valid[0].float(), half) and bool((batch.valid[1] == 1).all())
    plain, _ = collate([Sample(torch.rand(3, 4, 4))])
    assert plain.valid is None
