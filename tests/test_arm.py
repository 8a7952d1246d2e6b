"""ARM's wiring against hand-worked examples and independent computations: cluster layouts,
prediction orders, which token each token predicts, that no token sees a later cluster, the
loss, gradients on every grid modality, and the config errors."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import normalised_patches_by_hand, shipped_method_config, tiny_method

from fmcore.errors import ConfigError
from fmcore.method import Batch, StepContext
from fmcore.modalities.base import Modality
from fmcore.modalities.image2d import Image2D
from fmcore.modalities.points import Points
from fmcore.modalities.video import Video
from fmcore.modalities.volume3d import Volume3D
from fmcore.plugins.autoregressive.arm import ARM
from fmcore.plugins.autoregressive.clusters import (
    cluster_layout,
    cluster_ranks,
    fit_cluster,
    next_cluster_tokens,
)
from fmcore.view_maker import ViewMaker

pytestmark = pytest.mark.usefixtures("one_thread")

# A 4 x 4 token grid in 2 x 2 clusters, numbered in raster order:
#    0  1 |  2  3        cluster 0: 0 1 4 5     cluster 1: 2 3 6 7
#    4  5 |  6  7        cluster 2: 8 9 12 13   cluster 3: 10 11 14 15
#   ------+------
#    8  9 | 10 11
#   12 13 | 14 15
LAYOUT_4X4 = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


SMALL = {"head": {"width": 24, "depth": 1, "mlp_ratio": 2.0}, "cluster": [2, 2]}
build_arm = partial(tiny_method, ARM, "arm", SMALL)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_clusters_are_boxes_on_the_grid_in_raster_order() -> None:
    assert cluster_layout((4, 4), (2, 2), "k").tolist() == LAYOUT_4X4
    # a 2 x 2 x 2 grid (time, height, width) in clusters of one frame: 2 clusters of 4
    assert cluster_layout((2, 2, 2), (1, 2, 2), "k").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # a 2 x 4 grid in 2 x 1 columns
    assert cluster_layout((2, 4), (2, 1), "k").tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


@pytest.mark.parametrize(
    ("shape", "message"),
    [((3, 2), "does not tile"), ((2, 2, 2), "has 3 axes"), ((0, 2), "does not tile")],
)
def test_a_cluster_shape_that_does_not_tile_the_grid_is_named(
    shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"method\.cluster=.*{message}"):
        cluster_layout((4, 4), shape, "method.cluster")


@pytest.mark.parametrize(
    ("grid", "requested", "fitted"),
    [
        ((12, 12), (4, 4), (4, 4)),  # ARM's 192-px images: 9 clusters of 4 x 4
        ((14, 14), (4, 4), (2, 2)),  # 224-px tiles: 4 does not divide 14, 2 does
        ((4, 4), (4, 4), (2, 4)),  # one cluster would leave nothing to predict
        ((2, 2, 2), (2, 2, 2), (1, 2, 2)),
        ((8, 6), (3, 3), (2, 3)),
    ],
)
def test_the_cluster_is_fitted_to_the_grid(
    grid: tuple[int, ...], requested: tuple[int, ...], fitted: tuple[int, ...]
) -> None:
    assert fit_cluster(grid, requested, "method.cluster") == fitted


def test_random_orders_are_permutations_and_raster_is_the_identity() -> None:
    ranks = cluster_ranks(50, 6, "random", gen())
    assert all(sorted(row) == list(range(6)) for row in ranks.tolist())
    assert len({tuple(row) for row in ranks.tolist()}) > 30  # not one order for everyone
    assert cluster_ranks(2, 4, "raster", gen()).tolist() == [[0, 1, 2, 3]] * 2


def test_each_token_targets_its_counterpart_in_the_next_cluster() -> None:
    layout = torch.tensor(LAYOUT_4X4)
    raster = next_cluster_tokens(layout, torch.tensor([[0, 1, 2, 3]]))[0].tolist()
    assert raster[0] == 2 and raster[5] == 7  # cluster 0 -> cluster 1, same place
    assert raster[3] == 9 and raster[7] == 13  # cluster 1 -> cluster 2
    assert raster[14] == 14  # the last cluster points at itself (never scored)
    # clusters ranked 2, 0, 3, 1: the order is cluster 1, 3, 0, 2
    shuffled = next_cluster_tokens(layout, torch.tensor([[2, 0, 3, 1]]))[0].tolist()
    assert shuffled[2] == 10 and shuffled[7] == 15  # cluster 1 -> cluster 3
    assert shuffled[11] == 1 and shuffled[14] == 4  # cluster 3 -> cluster 0
    assert shuffled[0] == 8 and shuffled[5] == 13  # cluster 0 -> cluster 2
    assert shuffled[9] == 9  # cluster 2 is last


def test_loss_is_the_mean_squared_error_against_the_next_clusters_patches() -> None:
    method = build_arm()
    view = torch.rand(2, 3, 16, 16, generator=gen())
    layout = torch.tensor(LAYOUT_4X4)
    ranks = torch.tensor([[0, 1, 2, 3], [2, 0, 3, 1]])
    order = [[0, 1, 2, 3], [1, 3, 0, 2]]  # clusters in prediction order, by hand
    with torch.no_grad():
        out = method.predict(view, method.encoder.tokenizer(view), layout, ranks)
        loss = method.modality.reconstruction_loss(out.pred, out.target, out.scored)
    errors = []
    for sample in range(2):
        patches = normalised_patches_by_hand(view[sample], 4)
        for current, following in zip(order[sample], order[sample][1:], strict=False):
            for place in range(4):
                token, target = LAYOUT_4X4[current][place], LAYOUT_4X4[following][place]
                errors.append((out.pred[sample, token] - patches[target]).pow(2).mean())
    assert len(errors) == 2 * 3 * 4
    assert float(loss) == pytest.approx(float(torch.stack(errors).mean()), rel=1e-5)


def test_no_token_sees_a_later_cluster_but_sees_its_own() -> None:
    method = build_arm()
    view = torch.rand(1, 3, 16, 16, generator=gen(1))
    layout = torch.tensor(LAYOUT_4X4)
    ranks = torch.tensor([[2, 0, 3, 1]])  # order: cluster 1, 3, 0, 2
    tokenizer = method.encoder.tokenizer

    def features_after(cluster: int) -> torch.Tensor:
        """Trunk outputs when cluster ``cluster``'s pixels are replaced."""
        changed = view.clone()
        row, col = divmod(cluster, 2)
        changed[..., row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] = 0.5
        return method.predict(changed, tokenizer(changed), layout, ranks).encoded.patches[0]

    with torch.no_grad():
        base = method.predict(view, tokenizer(view), layout, ranks).encoded.patches[0]
        for cluster, rank in enumerate(ranks[0].tolist()):
            changed = features_after(cluster)
            for other, other_rank in enumerate(ranks[0].tolist()):
                tokens = LAYOUT_4X4[other]
                same = torch.allclose(changed[tokens], base[tokens], atol=1e-6)
                assert same == (other_rank < rank), (cluster, other)


@pytest.mark.parametrize(
    ("modality", "size", "channels", "options", "cluster", "count"),
    [
        (Image2D(), (16, 16), 3, {"patch_size": 4}, [2, 2], 4),  # a 4 x 4 grid
        (Volume3D(), (8, 8, 8), 1, {"patch_size": 4}, [1, 2, 2], 2),  # 2 x 2 x 2
        (Video(), (4, 16, 16), 3, {"patch_size": 8, "tubelet": 2}, [1, 2, 1], 4),  # 2 x 2 x 2
    ],
)
def test_every_grid_modality_trains_every_parameter(
    modality: Modality,
    size: tuple[int, ...],
    channels: int,
    options: dict,
    cluster: list[int],
    count: int,
) -> None:
    method = build_arm(modality, size, channels, options, cluster=cluster).train()
    batch = torch.rand(4, channels, *size, generator=gen())
    views = ViewMaker(modality, size, method.encoder.tokenizer.size_multiple)
    ctx = StepContext(0, 10, 1e-3, 0.05, 0.99, views, gen())
    out = method(Batch(batch, torch.full((4,), -1)), ctx)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    missing = [name for name, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert out.metrics["clusters"] == count


def test_video_defaults_to_arvideos_random_order() -> None:
    assert shipped_method_config("arm", "video", {}).order == "random"
    assert shipped_method_config("arm", "image2d", {}).order == "raster"


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"method\.order must be one of raster, random"):
        build_arm(order="spiral")
    with pytest.raises(ConfigError, match=r"method\.cluster=\[2\] has 1 axes"):
        method = build_arm(cluster=[2])
        method.layout(method.encoder.tokenizer(torch.rand(1, 3, 16, 16)))
    with pytest.raises(ConfigError, match="points modality's tokens have no grid"):
        method = build_arm(Points(), (128,), 3, {"num_groups": 16, "group_size": 8})
        method.layout(method.encoder.tokenizer(torch.randn(1, 128, 3)))
