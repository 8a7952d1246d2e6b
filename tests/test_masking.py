"""Random token masks, their visible/masked index split, and video tube masking."""

from __future__ import annotations

import pytest
import torch

from fmcore.modalities.base import TokenizerSettings, Tokens
from fmcore.modalities.image2d import Image2D
from fmcore.modalities.masking import masked_count, random_token_mask, split_indices
from fmcore.modalities.video import Video

CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("num_tokens", "ratio", "expected"),
    [(196, 0.75, 147), (16, 0.5, 8), (10, 0.0, 0), (10, 0.34, 3), (4, 0.9, 3), (10, 0.99, 9)],
)
def test_masked_count_by_hand(num_tokens, ratio, expected):
    assert masked_count(num_tokens, ratio) == expected


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_masked_count_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="mask ratio"):
        masked_count(10, ratio)


@pytest.mark.parametrize(("num_tokens", "ratio"), [(196, 0.75), (17, 0.4), (8, 0.0), (5, 0.95)])
def test_random_token_mask_exact_count_per_row(num_tokens, ratio):
    mask = random_token_mask(6, num_tokens, ratio, gen(0), CPU)
    assert mask.dtype == torch.bool
    assert mask.shape == (6, num_tokens)
    assert mask.sum(dim=1).tolist() == [masked_count(num_tokens, ratio)] * 6


def test_random_token_mask_is_seeded_and_uniform():
    a = random_token_mask(4, 50, 0.6, gen(1), CPU)
    assert torch.equal(a, random_token_mask(4, 50, 0.6, gen(1), CPU))
    assert not torch.equal(a, random_token_mask(4, 50, 0.6, gen(2), CPU))
    assert len({tuple(row.tolist()) for row in a}) == 4  # rows differ
    # every position is masked with probability ratio
    many = random_token_mask(4000, 10, 0.3, gen(3), CPU).float().mean(dim=0)
    assert bool(((many - 0.3).abs() < 0.03).all())


def test_split_indices_hand_example():
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, True, True]])
    visible, masked = split_indices(mask)
    assert visible.tolist() == [[0, 2], [1, 2]]
    assert masked.tolist() == [[1, 3, 4], [0, 3, 4]]


@pytest.mark.parametrize(("num_tokens", "ratio"), [(64, 0.75), (9, 0.5), (6, 0.0)])
def test_split_indices_is_a_sorted_permutation_split(num_tokens, ratio):
    mask = random_token_mask(5, num_tokens, ratio, gen(4), CPU)
    visible, masked = split_indices(mask)
    count = masked_count(num_tokens, ratio)
    assert visible.shape == (5, num_tokens - count)
    assert masked.shape == (5, count)
    for b in range(5):
        v, m = visible[b].tolist(), masked[b].tolist()
        assert v == sorted(v) and m == sorted(m)
        assert not set(v) & set(m)
        assert sorted(v + m) == list(range(num_tokens))
        assert not mask[b, v].any() and mask[b, m].all()


def test_split_indices_rejects_unequal_counts():
    mask = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(ValueError, match="same number"):
        split_indices(mask)


def test_video_tube_mask_repeats_spatial_mask_over_time():
    settings = TokenizerSettings(
        embed_dim=8, sample_size=(4, 32, 32), channels=3, options={"patch_size": 8, "tubelet": 2}
    )
    video = Video()
    tokens = video.build_tokenizer(settings)(torch.rand(3, 3, 4, 32, 32, generator=gen(5)))
    assert tokens.grid == (2, 4, 4)
    mask = video.token_mask(3, tokens, 0.75, gen(6))
    assert mask.shape == (3, 32) and mask.dtype == torch.bool
    # token index = t * (h * w) + y * w + x: the same spatial positions at every time step
    cube = mask.view(3, 2, 4, 4)
    assert torch.equal(cube[:, 0], cube[:, 1])
    assert cube[:, 0].sum(dim=(1, 2)).tolist() == [masked_count(16, 0.75)] * 3
    assert len({tuple(row.flatten().tolist()) for row in cube[:, 0]}) == 3  # per-sample masks
    split_indices(mask)  # equal counts per row, so the split works
    # deterministic for a seed
    assert torch.equal(mask, video.token_mask(3, tokens, 0.75, gen(6)))


def test_video_mask_without_grid_falls_back_to_random_mask():
    tokens = Tokens(x=torch.zeros(2, 20, 8), pos=torch.zeros(1, 20, 8), grid=None)
    mask = Video().token_mask(2, tokens, 0.5, gen(7))
    assert mask.sum(dim=1).tolist() == [10, 10]


def test_image_token_mask_exact_count():
    tokens = Tokens(x=torch.zeros(4, 49, 8), pos=torch.zeros(1, 49, 8), grid=(7, 7))
    mask = Image2D().token_mask(4, tokens, 0.75, gen(8))
    assert mask.sum(dim=1).tolist() == [masked_count(49, 0.75)] * 4


def test_tokens_select_gathers_visible_rows():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    pos = torch.arange(5 * 3, dtype=torch.float32).view(1, 5, 3) * -1
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, True, True]])
    visible, _ = split_indices(mask)
    kept = Tokens(x=x, pos=pos, grid=(5,)).select(visible)
    assert kept.grid is None
    assert torch.equal(kept.x[0], x[0, [0, 2]]) and torch.equal(kept.x[1], x[1, [1, 2]])
    assert torch.equal(kept.pos[0], pos[0, [0, 2]]) and torch.equal(kept.pos[1], pos[0, [1, 2]])


@pytest.mark.parametrize(("grid", "target"), [((4, 4), 7), ((14, 14), 60), ((2, 4, 4), 12)])
def test_a_block_token_mask_masks_exactly_the_target_in_clusters(grid, target):
    """Exact count every time; and masked tokens have more masked grid neighbours (on the
    torus) than a uniformly random mask's 2 x rank x (target - 1) / (N - 1)."""
    import math

    import numpy as np

    num_tokens = math.prod(grid)
    tokens = Tokens(x=torch.zeros(1, num_tokens, 8), pos=torch.zeros(1, 1, 8), grid=grid)
    ratios = []
    for seed in range(20):
        mask = Image2D().block_token_mask(
            tokens, target, np.random.default_rng(seed), max_block=num_tokens // 2
        )
        assert mask.shape == (num_tokens,) and int(mask.sum()) == target
        cube = mask.reshape(grid)
        axes = range(len(grid))
        neighbours = sum(np.roll(cube, s, a)[cube].sum() for a in axes for s in (1, -1))
        ratios.append(neighbours / target / (2 * len(grid) * (target - 1) / (num_tokens - 1)))
    assert np.mean(ratios) > 1.2


def test_a_block_token_mask_without_a_grid_is_random_and_exact():
    import numpy as np

    tokens = Tokens(x=torch.zeros(1, 20, 8), pos=torch.zeros(1, 20, 8), grid=None)
    mask = Image2D().block_token_mask(tokens, 9, np.random.default_rng(1))
    assert int(mask.sum()) == 9


def test_a_valid_mask_masks_every_invalid_token_and_budgets_over_the_valid_ones():
    """Rows with 12 and 8 of 16 tokens valid at ratio 0.75: (1 - 0.75) x 10, the mean valid
    count, is 2.5, rounded to 2 visible tokens per row, all of them valid; every invalid token
    is masked."""
    valid = torch.zeros(2, 16, dtype=torch.bool)
    valid[0, :12] = True
    valid[1, 4:12] = True
    mask = random_token_mask(2, 16, 0.75, gen(3), torch.device("cpu"), valid)
    visible = ~mask
    assert visible.sum(dim=1).tolist() == [2, 2]
    assert not (visible & ~valid).any()
    assert mask[~valid].all()


def test_a_valid_mask_draws_the_visible_tokens_uniformly_among_the_valid_ones():
    valid = torch.zeros(1, 16, dtype=torch.bool)
    valid[0, ::2] = True  # 8 valid tokens, 4 visible at ratio 0.5
    counts = torch.zeros(16)
    generator = gen(1)
    for _ in range(800):
        counts += ~random_token_mask(1, 16, 0.5, generator, torch.device("cpu"), valid)[0]
    assert counts[1::2].sum() == 0
    assert torch.allclose(counts[::2] / 800, torch.full((8,), 0.5), atol=0.08)


def test_a_row_with_fewer_valid_tokens_than_the_budget_shows_invalid_ones_too():
    """Budgets are per batch (every row keeps as many tokens visible): a row with 1 valid token
    of 16 beside one with 15 keeps 4 visible at ratio 0.5, its valid token among them."""
    valid = torch.zeros(2, 16, dtype=torch.bool)
    valid[0, :15] = True
    valid[1, 0] = True
    mask = random_token_mask(2, 16, 0.5, gen(0), torch.device("cpu"), valid)
    assert (~mask).sum(dim=1).tolist() == [4, 4]
    assert not mask[1, 0]


def test_video_tubes_are_valid_where_every_frame_is():
    modality = Video()
    tokens = Tokens(x=torch.zeros(1, 2 * 4, 8), pos=torch.zeros(1, 8, 8), grid=(2, 2, 2))
    valid = torch.ones(1, 2, 4, dtype=torch.bool)
    valid[0, 1, 3] = False  # spatial token 3 lacks data in the second frame
    mask = modality.token_mask(1, tokens, 0.5, gen(0), valid.reshape(1, 8))
    spatial = mask.view(1, 2, 4)
    assert torch.equal(spatial[:, 0], spatial[:, 1])  # still tubes
    assert spatial[0, 0, 3]  # the tube through the invalid token is hidden
