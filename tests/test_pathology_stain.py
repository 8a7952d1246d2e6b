"""HED stain jitter against an independent NumPy Ruifrok-Johnston round trip; tile orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmcore.domains.pathology.orientation import RandomDihedral
from fmcore.domains.pathology.stain import HEDJitter, hed_jitter, hed_to_rgb, rgb_to_hed

# Ruifrok & Johnston (2001): optical density of one unit of haematoxylin, eosin, DAB.
STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def numpy_hed_jitter(rgb: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """rgb (N, 3) in [0, 1] -> stain amounts -> scaled and shifted -> rgb, in float64."""
    density = -np.log(np.maximum(rgb, 1e-6))
    amounts = density @ np.linalg.inv(STAINS)
    amounts = amounts * scale + bias
    return np.clip(np.exp(-(amounts @ STAINS)), 0.0, 1.0)


def images(batch: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 0.95 + 0.05


def as_pixels(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).reshape(-1, 3).double().numpy()


def test_the_round_trip_is_the_identity_without_jitter() -> None:
    x = images()
    np.testing.assert_allclose(hed_to_rgb(rgb_to_hed(x)).numpy(), x.numpy(), atol=2e-6)
    ones, zeros = torch.ones(4, 3), torch.zeros(4, 3)
    np.testing.assert_allclose(hed_jitter(x, ones, zeros).numpy(), x.numpy(), atol=2e-6)


def test_a_pure_stain_decomposes_into_that_stain() -> None:
    amount = 0.8
    eosin_only = torch.from_numpy(np.exp(-amount * STAINS[1])).float().view(1, 3, 1, 1)
    hed = rgb_to_hed(eosin_only).flatten()
    np.testing.assert_allclose(hed.numpy(), [0.0, amount, 0.0], atol=1e-5)


def test_a_known_perturbation_matches_the_numpy_computation() -> None:
    x = images()
    scale = torch.tensor([[1.05, 0.95, 1.0], [0.9, 1.1, 1.02], [1.0, 1.0, 1.0], [1.2, 0.8, 0.7]])
    bias = torch.tensor([[0.05, -0.05, 0.0], [0.0, 0.1, -0.02], [0.2, 0.0, 0.0], [-0.1, 0.1, 0.3]])
    got = hed_jitter(x, scale, bias)
    for i in range(len(x)):
        expected = numpy_hed_jitter(as_pixels(x[i]), scale[i].double().numpy(), bias[i].numpy())
        np.testing.assert_allclose(as_pixels(got[i]), expected, atol=2e-5)
    assert not torch.allclose(got[0], x[0], atol=1e-3)  # the perturbation did change colours


def test_the_view_step_draws_per_image_factors_from_the_generator() -> None:
    x = images(batch=8)
    step = HEDJitter(p=1.0, scale=0.1, bias=0.1)
    first = step(x, torch.Generator().manual_seed(3))
    again = step(x, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert first.shape == x.shape and first.dtype == x.dtype
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert all(not torch.allclose(first[i], x[i], atol=1e-3) for i in range(len(x)))

    # The same draws, replayed by hand: p draw, then scale and bias units.
    generator = torch.Generator().manual_seed(3)
    torch.rand(8, generator=generator)
    unit = torch.rand(2, 8, 3, generator=generator) * 2 - 1
    expected = hed_jitter(x, 1 + 0.1 * unit[0], 0.1 * unit[1])
    torch.testing.assert_close(first, expected)


def test_the_view_step_is_the_identity_when_off_and_skips_unselected_images() -> None:
    x = images(batch=64)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(HEDJitter(p=0.0)(x, generator), x)
    assert torch.equal(HEDJitter(p=1.0, scale=0.0, bias=0.0)(x, generator), x)
    half = HEDJitter(p=0.5, scale=0.2, bias=0.2)(x, generator)
    unchanged = sum(torch.equal(half[i], x[i]) for i in range(len(x)))
    assert 15 < unchanged < 49


def test_the_view_step_stays_in_float32_under_autocast() -> None:
    x = images()
    step = HEDJitter(p=1.0, scale=0.1, bias=0.1)
    plain = step(x, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = step(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(autocast, plain)


def test_dihedral_flips_and_transposes_reach_every_orientation() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(256, 1, 4, 4).contiguous()
    out = RandomDihedral(p=0.5)(x, torch.Generator().manual_seed(0))
    seen = {tuple(o.flatten().tolist()) for o in out}
    square = x[0, 0]
    expected = {
        tuple(square.flip(0).flatten().tolist()),  # vertical flip
        tuple(square.t().flatten().tolist()),  # transpose
        tuple(square.flip(0).t().flatten().tolist()),  # a quarter turn
        tuple(square.flatten().tolist()),
    }
    assert seen == expected
    assert torch.equal(RandomDihedral(p=0.0)(x, torch.Generator()), x)


@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (2, 3, 8, 8)])
def test_dihedral_keeps_the_shape(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape)
    assert RandomDihedral(p=1.0)(x, torch.Generator().manual_seed(0)).shape == shape
