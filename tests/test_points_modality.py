"""The points modality against hand-computed and brute-force references."""

from __future__ import annotations

import pytest
import torch

from fmcore.modalities.base import TokenizerSettings, ViewSpec
from fmcore.modalities.points import (
    Points,
    PointTokenizer,
    chamfer_distance,
    crop_indices,
    farthest_point_sampling,
    knn_groups,
)


def cloud(batch: int, num_points: int, features: int = 0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num_points, 3 + features, generator=generator)


def tokenizer(embed_dim: int = 32, groups: int = 16, size: int = 8) -> PointTokenizer:
    torch.manual_seed(0)
    settings = TokenizerSettings(
        embed_dim=embed_dim,
        sample_size=(256,),
        channels=4,
        options={"num_groups": groups, "group_size": size},
    )
    return Points().build_tokenizer(settings)


def test_chamfer_by_hand() -> None:
    a = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    b = torch.tensor([[[0.0, 0.0, 1.0]]])
    # a -> b: squared distances 1 and 2, mean 1.5; b -> a: nearest is (0, 0, 0) at 1, mean 1.
    assert chamfer_distance(a, b).tolist() == pytest.approx([2.5])
    c = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]])
    d = torch.tensor([[[0.0, 1.0, 0.0], [3.0, 0.0, 2.0], [3.0, 0.0, 0.0]]])
    # c -> d: 1 and 0, mean 0.5; d -> c: 1, 4, 0, mean 5/3.
    assert chamfer_distance(c, d).tolist() == pytest.approx([0.5 + 5 / 3])


def test_chamfer_symmetric_and_zero_for_identical() -> None:
    a, b = cloud(3, 7, seed=1), cloud(3, 5, seed=2)
    assert torch.allclose(chamfer_distance(a, b), chamfer_distance(b, a))
    assert torch.all(chamfer_distance(a, b) > 0)
    assert torch.equal(chamfer_distance(a, a), torch.zeros(3))
    shuffled = a[:, torch.randperm(7)]
    assert torch.equal(chamfer_distance(a, shuffled), torch.zeros(3))


def test_fps_on_a_line() -> None:
    x = torch.tensor([0.0, 4.0, 10.0, 1.0, 7.0])
    xyz = torch.stack([x, torch.zeros(5), torch.zeros(5)], dim=-1).unsqueeze(0)
    # start at 0 (x=0); farthest is x=10; then x=4 (4 from the set), x=7 (3), x=1 (1)
    assert farthest_point_sampling(xyz, 5).tolist() == [[0, 2, 1, 4, 3]]
    assert farthest_point_sampling(xyz, 3).tolist() == [[0, 2, 1]]


def test_fps_indices_distinct_even_with_duplicates() -> None:
    xyz = cloud(4, 10, seed=3).repeat(1, 3, 1)  # every point three times
    picked = farthest_point_sampling(xyz, 30)
    for row in picked.tolist():
        assert sorted(row) == list(range(30))
    generator = torch.Generator().manual_seed(0)
    random_start = farthest_point_sampling(cloud(4, 50), 12, generator)
    assert all(len(set(row)) == 12 for row in random_start.tolist())


def test_knn_matches_brute_force() -> None:
    xyz, centers = cloud(2, 40, seed=4), cloud(2, 5, seed=5)
    index = knn_groups(xyz, centers, 6)
    assert index.shape == (2, 5, 6) and index.dtype == torch.long
    for b in range(2):
        for g in range(5):
            c = centers[b, g].tolist()
            dists = [sum((p[i] - c[i]) ** 2 for i in range(3)) for p in xyz[b].tolist()]
            expected = sorted(range(40), key=lambda n: dists[n])[:6]
            assert index[b, g].tolist() == expected


def test_tokenizer_shapes_and_relative_groups() -> None:
    tok = tokenizer()
    x = cloud(2, 256, features=1)
    tokens = tok(x)
    assert tokens.x.shape == (2, 16, 32) and tokens.pos.shape == (2, 16, 32)
    assert tokens.grid is None
    assert tokens.groups.shape == (2, 16, 8, 3) and tokens.centers.shape == (2, 16, 3)
    # each centre is a point of the cloud and the nearest member of its own group
    assert torch.equal(tokens.groups[:, :, 0], torch.zeros(2, 16, 3))
    for b in range(2):
        for center in tokens.centers[b]:
            assert (x[b, :, :3] == center).all(dim=1).any()
    # members are cloud points: centre + offset reproduces some point
    members = tokens.groups + tokens.centers.unsqueeze(2)
    offsets = members[0].reshape(-1, 1, 3) - x[0, :, :3]  # (G * K, N, 3)
    assert offsets.abs().amax(dim=-1).amin(dim=1).max() < 1e-6
    target = tok.reconstruction_target(x, tokens)
    assert target.shape == (2, 16, 24) and tok.target_dim == 24
    assert torch.equal(target[0, 3].reshape(8, 3), tokens.groups[0, 3])
    assert tok.size_multiple == (1,)


def test_tokenizer_rejects_too_few_points() -> None:
    with pytest.raises(ValueError, match="groups"):
        tokenizer()(cloud(1, 12, features=1))


def test_loss_counts_masked_groups_only() -> None:
    target = torch.zeros(1, 3, 2 * 3)  # K = 2 points per group
    pred = torch.zeros(1, 3, 2 * 3)
    # masked group 1: pred {(0,0,0), (1,0,0)} vs target {(0,0,1), (0,0,1)}
    pred[0, 1] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    target[0, 1] = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    mask = torch.tensor([[False, True, False]])
    loss = Points().reconstruction_loss(pred, target, mask)
    assert loss.item() == pytest.approx(2.5)  # (1 + 2) / 2 + (1 + 1) / 2; others are not counted
    pred[0, 0] = 5.0
    pred[0, 2] = -3.0
    assert Points().reconstruction_loss(pred, target, mask).item() == pytest.approx(2.5)
    # a second masked group with zero distance halves the mean
    both = torch.tensor([[True, True, False]])
    pred[0, 0] = 0.0
    assert Points().reconstruction_loss(pred, target, both).item() == pytest.approx(1.25)


def test_augment_shape_normalised_and_reproducible() -> None:
    batch = cloud(3, 200, features=2, seed=6) * 5 + 2
    spec = ViewSpec(scale=(0.3, 1.0), flip=0.5, jitter=1.0, noise=0.01)
    views = [
        Points().augment(batch, spec, [64], torch.Generator().manual_seed(7)) for _ in range(2)
    ]
    assert views[0].shape == (3, 64, 5)
    assert torch.equal(views[0], views[1])
    other = Points().augment(batch, spec, [64], torch.Generator().manual_seed(8))
    assert not torch.equal(views[0], other)
    xyz = views[0][..., :3]
    assert xyz.mean(dim=1).abs().max() < 1e-5
    assert xyz.norm(dim=-1).max() <= 1 + 1e-5
    assert xyz.norm(dim=-1).amax(dim=1).min() > 1 - 1e-5


def test_augment_keeps_features_with_their_point() -> None:
    batch = cloud(2, 100, seed=9)
    tagged = torch.cat([batch, torch.arange(100.0).expand(2, -1).unsqueeze(-1)], dim=-1)
    spec = ViewSpec(scale=(1.0, 1.0), flip=0.0, jitter=0.0)
    view = Points().augment(tagged, spec, [100], torch.Generator().manual_seed(0))
    for b in range(2):
        ids = view[b, :, 3].long()
        assert sorted(ids.tolist()) == list(range(100))  # a permutation: no replacement needed
        # without flips/jitter the view is the cloud normalised, so point order is all that changed
        original = batch[b, ids]
        centred = original - original.mean(dim=0)
        expected = centred / centred.norm(dim=-1).max()
        assert torch.allclose(view[b, :, :3], expected, atol=1e-6)


def test_crop_indices_are_a_local_neighbourhood() -> None:
    xyz = cloud(3, 50, seed=10)
    index = crop_indices(xyz, (0.2, 0.2), 8, torch.Generator().manual_seed(0))
    assert index.shape == (3, 8)
    for b in range(3):
        points = xyz[b].tolist()
        chosen = set(index[b].tolist())
        assert len(chosen) == 8  # 8 <= 10 kept points: drawn without replacement

        def nearest_ten(c: int, pts: list = points) -> set[int]:
            d = [sum((p[i] - pts[c][i]) ** 2 for i in range(3)) for p in pts]
            return set(sorted(range(50), key=lambda n: d[n])[:10])

        assert any(chosen <= nearest_ten(c) for c in range(50))


def test_crop_indices_repeat_evenly_when_more_points_needed() -> None:
    xyz = cloud(2, 50, seed=11)
    index = crop_indices(xyz, (0.2, 0.2), 25, torch.Generator().manual_seed(1))
    for row in index.tolist():
        counts = sorted(row.count(i) for i in set(row))
        assert len(counts) == 10 and counts[0] >= 2 and counts[-1] <= 3


def test_gradient_reaches_the_mini_pointnet() -> None:
    tok = tokenizer()
    tokens = tok(cloud(2, 256, features=1))
    (tokens.x.square().mean() + tokens.pos.square().mean()).backward()
    for module in (tok.encoder.first[0], tok.encoder.second[-1], tok.pos_embed[0]):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_like_on_cpu() -> None:
    batch = cloud(2, 256, features=1).cuda()
    spec = ViewSpec(scale=(0.5, 1.0), jitter=1.0, noise=0.01)
    views = [
        Points().augment(batch, spec, [128], torch.Generator("cuda").manual_seed(3))
        for _ in range(2)
    ]
    assert views[0].device.type == "cuda" and torch.equal(views[0], views[1])
    tok = tokenizer()
    cpu_tokens = tok(views[0].cpu())
    cuda_tokens = tok.cuda()(views[0])
    assert torch.equal(cuda_tokens.centers.cpu(), cpu_tokens.centers)
    assert torch.allclose(cuda_tokens.x.cpu(), cpu_tokens.x, atol=1e-4)
    target = tok.reconstruction_target(views[0], cuda_tokens)
    mask = torch.zeros(2, 16, dtype=torch.bool, device="cuda")
    mask[:, ::2] = True
    loss = Points().reconstruction_loss(target + 0.1, target, mask)
    assert loss.device.type == "cuda" and loss.item() > 0
