"""DINOv2's pieces against independent computations: Sinkhorn-Knopp, DINO, iBOT, KoLeo, masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmcore.modalities.masking import block_mask
from fmcore.plugins.dinov2.centering import SoftmaxCentering, sinkhorn_knopp
from fmcore.plugins.dinov2.losses import dino_cross_entropy, ibot_patch_loss, koleo_loss


def reference_sinkhorn(logits: np.ndarray, temperature: float, iterations: int) -> np.ndarray:
    """Sinkhorn as scaling vectors: P = diag(u) exp(L/t) diag(v) with row sums 1/N and column
    sums 1/K, returned with each sample's row scaled to sum to 1."""
    kernel = np.exp(logits / temperature)  # (N, K)
    n, k = kernel.shape
    u, v = np.ones(n), np.ones(k)
    for _ in range(iterations):
        v = (1 / k) / (kernel.T @ u)  # prototypes get 1/K each
        u = (1 / n) / (kernel @ v)  # samples get 1/N each
    return n * (u[:, None] * kernel * v[None, :])


def test_sinkhorn_knopp_gives_balanced_assignments() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 5, generator=generator)
    q = sinkhorn_knopp(logits, temperature=0.5, iterations=50)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12))  # each sample: a distribution
    torch.testing.assert_close(q.sum(dim=0), torch.full((5,), 12 / 5), rtol=1e-4, atol=1e-4)
    expected = reference_sinkhorn(logits.double().numpy(), 0.5, 50)
    np.testing.assert_allclose(q.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_stays_exact_at_a_cold_temperature() -> None:
    """Cosine logits (DINO's head) at t = 0.01: exp(-200) is zero in float32, so whole
    prototypes would get no mass; the log-domain iteration still matches the float64 reference."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.rand(16, 64, generator=generator) * 2 - 1
    logits[:, :8] -= 1.5  # prototypes far from every sample: their whole column underflows
    q = sinkhorn_knopp(logits, temperature=0.01, iterations=3)
    assert torch.isfinite(q).all()
    expected = reference_sinkhorn(logits.double().numpy(), 0.01, 3)
    np.testing.assert_allclose(q.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_three_iterations_match_the_reference_exactly() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [2.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    q = sinkhorn_knopp(logits, temperature=0.7, iterations=3)
    np.testing.assert_allclose(
        q.numpy(), reference_sinkhorn(logits.double().numpy(), 0.7, 3), rtol=1e-5
    )


def test_dino_cross_entropy_on_a_hand_example() -> None:
    # B = 1, K = 2; student crops: global A, global B, one local; teacher: targets for A and B.
    student = torch.tensor(
        [[[0.0, 0.0]], [[math.log(3.0) * 0.1, 0.0]], [[0.0, math.log(4.0) * 0.1]]]
    )
    teacher = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]])
    # log-softmax at temperature 0.1: crop A [log .5, log .5]; crop B [log 3/4, log 1/4];
    # local [log 1/5, log 4/5]. Pairs: (A, tB), (B, tA), (local, tA), (local, tB).
    pairs = [
        -math.log(0.5),
        -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)),
        -(0.5 * math.log(0.2) + 0.5 * math.log(0.8)),
        -math.log(0.2),
    ]
    got = dino_cross_entropy(student, teacher, student_temp=0.1)
    assert math.isclose(float(got), sum(pairs) / 4, rel_tol=1e-5)


def test_ibot_loss_averages_masked_tokens_per_image_then_images() -> None:
    mask = torch.tensor([[True, True, False], [False, True, False], [False, False, False]])
    # three masked tokens, in mask order: image 0 token 0, image 0 token 1, image 1 token 1
    student = torch.zeros(3, 2)  # uniform predictions: cross-entropy = log 2 for any target
    student[2] = torch.tensor([0.0, math.log(3.0) * 0.1])  # image 1: softmax [1/4, 3/4]
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    image0 = math.log(2.0)  # both tokens
    image1 = -math.log(0.75)
    got = ibot_patch_loss(student, teacher, mask, student_temp=0.1)
    assert math.isclose(float(got), (image0 + image1 + 0.0) / 3, rel_tol=1e-5)


def test_koleo_matches_brute_force_nearest_neighbours() -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(7, 4, generator=generator)
    unit = [row / row.norm() for row in features.double()]
    expected = 0.0
    for i, a in enumerate(unit):
        nearest = min((a - b).norm().item() for j, b in enumerate(unit) if j != i)
        expected += -math.log(nearest + 1e-8)
    assert math.isclose(float(koleo_loss(features)), expected / 7, rel_tol=1e-4)


def test_softmax_centering_subtracts_an_ema_centre() -> None:
    centering = SoftmaxCentering(num_prototypes=2, momentum=0.9)
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    first = centering(logits, temperature=1.0)  # centre still zero: a plain softmax
    torch.testing.assert_close(first, torch.softmax(logits, dim=-1))
    torch.testing.assert_close(centering.center, torch.tensor([[0.1, 0.0]]))  # 0.1 x mean [1, 0]


@pytest.mark.parametrize("grid", [(8, 8), (4, 6, 6)])
def test_block_masks_cover_about_the_target_in_boxes(grid: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    tokens = math.prod(grid)
    for target in (4, tokens // 4, tokens // 2):
        mask = block_mask(grid, target, rng, max_block=tokens // 2)
        assert mask.shape == (tokens,)
        assert int(mask.sum()) <= target
        assert int(mask.sum()) >= 0.6 * target  # BEiT stops after ten failed placements


def test_block_mask_is_contiguous_for_a_single_box() -> None:
    mask = block_mask((10, 10), 9, np.random.default_rng(3), min_block=9).reshape(10, 10)
    rows, cols = np.nonzero(mask)
    assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == mask.sum()
