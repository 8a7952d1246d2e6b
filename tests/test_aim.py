"""AIM's wiring against independent computations: prefix lengths, which predictions count, that
no scored prediction sees its own target or anything after it, the loss, gradients, scopes and
the config errors."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import normalised_patches_by_hand, tiny_method

from fmcore.errors import ConfigError
from fmcore.method import Batch, Scope, StepContext
from fmcore.modalities.base import Modality
from fmcore.modalities.image2d import Image2D
from fmcore.modalities.points import Points
from fmcore.modalities.video import Video
from fmcore.modalities.volume3d import Volume3D
from fmcore.plugins.autoregressive.aim import AIM, next_token_scored, random_prefix
from fmcore.view_maker import ViewMaker

SMALL_HEAD = {"width": 24, "depth": 1, "mlp_ratio": 2.0}
build_aim = partial(tiny_method, AIM, "aim", {"head": SMALL_HEAD})

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_prefix_lengths_cover_one_to_n_minus_one_uniformly() -> None:
    prefix = random_prefix(20000, 6, gen())
    assert prefix.min() == 1 and prefix.max() == 5
    counts = torch.bincount(prefix, minlength=6)[1:].float()
    assert torch.allclose(counts / counts.sum(), torch.full((5,), 0.2), atol=0.02)


def test_only_predictions_of_tokens_after_the_prefix_count() -> None:
    # N = 4 tokens: position k predicts token k + 1 (three predictions); prefix 1 scores tokens
    # 1, 2, 3, prefix 3 only token 3.
    scored = next_token_scored(torch.tensor([1, 3, 2]), 4)
    expected = [[True, True, True], [False, False, True], [False, True, True]]
    assert scored.tolist() == expected


def test_loss_is_the_mean_squared_error_of_next_patches_after_the_prefix() -> None:
    method = build_aim()
    view = torch.rand(3, 3, 16, 16, generator=gen())
    prefix = torch.tensor([1, 7, 15])
    with torch.no_grad():
        out = method.predict(view, method.encoder.tokenizer(view), prefix)
        loss = method.modality.reconstruction_loss(out.pred, out.target, out.scored)

    errors = []
    for sample in range(3):
        patches = normalised_patches_by_hand(view[sample], 4)  # (16, 48)
        for position in range(15):
            if position + 1 >= int(prefix[sample]):
                error = (out.pred[sample, position] - patches[position + 1]).pow(2).mean()
                errors.append(error)
    assert len(errors) == 15 + 9 + 1
    assert float(loss) == pytest.approx(float(torch.stack(errors).mean()), rel=1e-5)


def test_no_scored_prediction_sees_its_target_or_any_later_token() -> None:
    """Changing the pixels of token k + 1 and everything after it leaves position k's prediction
    unchanged wherever it is scored; changing token k itself does change it."""
    method = build_aim()
    view = torch.rand(1, 3, 16, 16, generator=gen(1))
    prefix = torch.tensor([5])
    with torch.no_grad():
        base = method.predict(view, method.encoder.tokenizer(view), prefix).pred[0]
        for position in range(4, 15):  # scored: position + 1 >= prefix
            changed = view.clone()
            row, col = divmod(position + 1, 4)
            changed[..., row * 4 :, :] = 0.5  # later rows of patches...
            changed[..., row * 4 : row * 4 + 4, : col * 4] = view[
                ..., row * 4 : row * 4 + 4, : col * 4
            ]
            pred = method.predict(changed, method.encoder.tokenizer(changed), prefix).pred[0]
            assert torch.allclose(pred[position], base[position], atol=1e-6), position
        own = view.clone()
        own[..., 8:12, 4:8] = 0.5  # token 9
        pred = method.predict(own, method.encoder.tokenizer(own), prefix).pred[0]
        assert not torch.allclose(pred[9], base[9], atol=1e-4)


def test_inside_the_prefix_attention_goes_both_ways() -> None:
    """Position 0's output sees the whole prefix (AIM's bidirectional prefix), not only itself."""
    method = build_aim()
    view = torch.rand(1, 3, 16, 16, generator=gen(2))
    changed = view.clone()
    changed[..., 0:4, 8:12] = 0.5  # token 2, inside a prefix of 5
    with torch.no_grad():
        base = method.predict(view, method.encoder.tokenizer(view), torch.tensor([5])).pred[0]
        tokens = method.encoder.tokenizer(changed)
        pred = method.predict(changed, tokens, torch.tensor([5])).pred[0]
    assert not torch.allclose(pred[0], base[0], atol=1e-4)


@pytest.mark.parametrize(
    ("modality", "size", "channels", "options"),
    [
        (Image2D(), (16, 16), 3, {"patch_size": 4}),
        (Volume3D(), (8, 8, 8), 1, {"patch_size": 4}),
        (Video(), (4, 16, 16), 3, {"patch_size": 8, "tubelet": 2}),
    ],
)
def test_every_grid_modality_trains_every_parameter(
    modality: Modality, size: tuple[int, ...], channels: int, options: dict
) -> None:
    """One forward as the engine calls it; DDP's reducer needs a gradient on every trainable
    parameter."""
    method = build_aim(modality, size, channels, options).train()
    batch = torch.rand(4, channels, *size, generator=gen())
    views = ViewMaker(modality, size, method.encoder.tokenizer.size_multiple)
    out = method(
        Batch(batch, torch.full((4,), -1)), StepContext(0, 10, 1e-3, 0.05, 0.99, views, gen())
    )
    out.loss.backward()
    assert torch.isfinite(out.loss)
    missing = [name for name, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert 0 < out.metrics["prefix_fraction"] < 1
    assert out.metrics["collapse/loss_vs_mean_predictor"] > 0


def test_point_groups_have_no_raster_order_and_are_refused() -> None:
    method = build_aim(Points(), (128,), 3, {"num_groups": 16, "group_size": 8})
    cloud = torch.randn(2, 128, 3, generator=gen())
    tokens = method.encoder.tokenizer(cloud)
    with pytest.raises(ConfigError, match="points modality's tokens have no grid"):
        method.predict(cloud, tokens, torch.tensor([1, 2]))


def test_scopes_share_the_trunk_and_keep_the_head_per_domain() -> None:
    scopes = build_aim().scopes()
    assert scopes["encoder.trunk.blocks.0.attn.qkv.weight"] == Scope.SHARED
    assert scopes["head.proj_out.weight"] == Scope.DOMAIN
    assert scopes["encoder.tokenizer.proj.weight"] == Scope.DOMAIN


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"method\.head\.widht"):
        build_aim(**{"head.widht": 8})
    with pytest.raises(ConfigError, match=r"method\.head\.depth"):
        build_aim(**{"head.depth": "deep"})
    with pytest.raises(ConfigError, match="count must be 1"):
        build_aim(**{"views.global.count": 2})
