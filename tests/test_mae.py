"""MAE's wiring against independent computations: masks, what the encoder sees, the loss, the
decoder's positions, federated scopes, per-modality settings and the reconstruction picture."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from fmcore.backbones.vit import VisionTransformer, ViTConfig
from fmcore.config import core_config_dir, for_modality
from fmcore.encoder import Encoder
from fmcore.errors import ConfigError
from fmcore.io import write_png
from fmcore.method import Batch, Scope, StepContext
from fmcore.modalities.base import Modality, TokenizerSettings, Tokens
from fmcore.modalities.grid import normalized_patches, patchify
from fmcore.modalities.image2d import Image2D
from fmcore.modalities.masking import masked_count
from fmcore.modalities.points import Points
from fmcore.modalities.video import Video
from fmcore.modalities.volume3d import Volume3D
from fmcore.plugins.mae.method import MAE
from fmcore.plugins.mae.recon_grid import (
    reconstruction_grid,
    reconstruction_panels,
    unpatchify,
)
from fmcore.view_maker import ViewMaker

WIDTH = 32
SMALL_DECODER = {"embed_dim": 24, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def mae_config(modality: str, **overrides: object) -> DictConfig:
    """The shipped method config (configs/method/mae.yaml) as it runs on ``modality``, with a
    small decoder."""
    raw = OmegaConf.load(core_config_dir() / "method" / "mae.yaml").method
    config = for_modality(raw, modality, "method")
    config.decoder = dict(SMALL_DECODER)
    for key, value in overrides.items():
        OmegaConf.update(config, key, value)
    return config


def build_mae(
    modality: Modality,
    sample_size: Sequence[int],
    channels: int,
    options: dict | None = None,
    **overrides: object,
) -> MAE:
    torch.manual_seed(0)
    settings = TokenizerSettings(WIDTH, tuple(sample_size), channels, options or {})
    trunk = VisionTransformer(ViTConfig(embed_dim=WIDTH, depth=2, num_heads=2))
    encoder = Encoder(modality.build_tokenizer(settings), trunk)
    return MAE(mae_config(modality.name, **overrides), encoder, modality)


def image_mae(**overrides: object) -> MAE:
    return build_mae(Image2D(), (16, 16), 3, {"patch_size": 4}, **overrides)


def points_mae() -> MAE:
    return build_mae(Points(), (128,), 3, {"num_groups": 16, "group_size": 8})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- masking and what the encoder sees ------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_visible_and_masked_indices_are_a_permutation_split(ratio: float) -> None:
    method = image_mae(mask_ratio=ratio)
    out = method.reconstruct(torch.randn(5, 3, 16, 16), gen())
    num_tokens = 16
    hidden = masked_count(num_tokens, ratio)
    assert out.mask.shape == (5, num_tokens)
    assert out.mask.sum(dim=1).tolist() == [hidden] * 5
    assert out.visible.shape == (5, num_tokens - hidden)
    for row, visible in zip(out.mask, out.visible, strict=True):
        masked = row.nonzero().flatten()
        assert sorted(visible.tolist() + masked.tolist()) == list(range(num_tokens))
        assert not row[visible].any()
    assert out.masked_fraction == hidden / num_tokens


def test_the_encoder_sees_exactly_the_visible_tokens() -> None:
    method = image_mae()
    seen = []
    method.encoder.trunk.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    view = torch.randn(4, 3, 16, 16)
    out = method.reconstruct(view, gen(3))

    (trunk_tokens,) = seen
    assert trunk_tokens.x.shape == (4, 4, WIDTH)  # 16 tokens, 12 masked
    expected = method.encoder.tokenizer(view)
    index = out.visible.unsqueeze(-1).expand(-1, -1, WIDTH)
    assert torch.equal(trunk_tokens.x, torch.gather(expected.x, 1, index))
    assert torch.equal(trunk_tokens.pos, torch.gather(expected.pos.expand(4, -1, -1), 1, index))
    assert method.encoder.take_token_count() == 4 * 4


def test_video_masks_whole_tubes_at_the_video_ratio() -> None:
    method = build_mae(Video(), (4, 16, 16), 3, {"patch_size": 8, "tubelet": 2})
    assert method.mask_ratio == 0.9
    out = method.reconstruct(torch.randn(3, 3, 4, 16, 16), gen())
    tubes = out.mask.reshape(3, 2, 4)  # (B, T tokens, h*w)
    assert torch.equal(tubes[:, 0], tubes[:, 1])  # the same spatial mask at every time step
    assert out.mask.sum(dim=1).tolist() == [2 * masked_count(4, 0.9)] * 3


# --- the loss ----------------------------------------------------------------------------------


def reference_masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over hidden tokens of the per-token mean squared error, one token at a time."""
    errors = [
        float(((pred[b, n] - target[b, n]) ** 2).mean())
        for b in range(mask.shape[0])
        for n in range(mask.shape[1])
        if mask[b, n]
    ]
    return sum(errors) / len(errors)


def test_loss_matches_an_independent_masked_mse_and_ignores_visible_targets() -> None:
    method = image_mae()
    view = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        out = method.reconstruct(view, gen(1))
    target = method.encoder.tokenizer.reconstruction_target(view, out.tokens)
    loss = method.modality.reconstruction_loss(out.pred, target, out.mask)
    assert math.isclose(float(loss), reference_masked_mse(out.pred, target, out.mask), rel_tol=1e-5)

    changed = target.clone()
    changed[~out.mask] += 100.0  # every visible token's target
    assert float(method.modality.reconstruction_loss(out.pred, changed, out.mask)) == float(loss)
    changed = target.clone()
    b, n = out.mask.nonzero()[0].tolist()
    changed[b, n] += 1.0  # one hidden token's target
    assert float(method.modality.reconstruction_loss(out.pred, changed, out.mask)) != float(loss)


def forward_loss(method: MAE, batch: torch.Tensor, seed: int) -> float:
    """One ``forward`` as the engine calls it, with seeded views and masks."""
    views = ViewMaker(method.modality, batch.shape[2:], method.encoder.tokenizer.size_multiple)
    ctx = StepContext(0, 1, 1e-3, 0.05, 0.99, views, gen(seed))
    labels = torch.full((batch.shape[0],), -1)
    return float(method(Batch(batch, labels), ctx).loss.detach())


def test_forward_loss_does_not_depend_on_the_visible_tokens_targets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through forward(): scrambling the targets of the tokens the encoder saw changes nothing."""
    method = image_mae()
    batch = torch.rand(4, 3, 16, 16, generator=gen())
    masks: list[torch.Tensor] = []
    token_mask = method.modality.token_mask

    def recording_mask(*args: object) -> torch.Tensor:
        masks.append(token_mask(*args))
        return masks[-1]

    monkeypatch.setattr(method.modality, "token_mask", recording_mask)
    plain = forward_loss(method, batch, seed=5)
    original_target = method.encoder.tokenizer.reconstruction_target

    def scrambled(x: torch.Tensor, tokens: Tokens, normalize: bool = True) -> torch.Tensor:
        target = original_target(x, tokens, normalize)
        noise = 50 * torch.randn(target.shape, generator=gen(9))
        return torch.where(masks[-1].unsqueeze(-1), target, noise)

    monkeypatch.setattr(method.encoder.tokenizer, "reconstruction_target", scrambled)
    assert forward_loss(method, batch, seed=5) == plain
    assert forward_loss(method, batch, seed=6) != plain  # other masks: the check has teeth


def test_tokens_outside_the_valid_region_are_hidden_and_left_out_of_the_loss() -> None:
    """A 16x16 view whose left half has no data (4 of 4x4 tokens per row): the encoder sees
    valid tokens only, and the loss is the MSE over the hidden valid tokens, by hand."""
    method = image_mae(mask_ratio=0.5)
    view = torch.rand(3, 3, 16, 16, generator=gen())
    valid = torch.ones(3, 1, 16, 16)
    valid[..., :8] = 0
    out = method.reconstruct(view, gen(2), valid=valid)
    token_valid = torch.tensor([False, False, True, True] * 4).expand(3, -1)
    assert torch.equal(out.valid, token_valid)
    assert out.visible.shape == (3, 4)  # half of the 8 valid tokens
    assert token_valid.gather(1, out.visible).all()
    target = method.encoder.tokenizer.reconstruction_target(view, out.tokens)
    loss = method.modality.reconstruction_loss(out.pred, target, out.decoded_mask)
    graded = out.mask & token_valid
    hand = ((out.pred - target) ** 2).mean(dim=-1)[graded].mean()
    assert float(loss.detach()) == pytest.approx(float(hand.detach()), rel=1e-5)


def test_forward_grades_no_token_outside_the_batch_valid_masks() -> None:
    """Through forward() with Batch.valid: noise in the targets of tokens without data changes
    nothing, noise in a valid hidden token's does."""
    method = image_mae(mask_ratio=0.5)
    data = torch.rand(2, 3, 16, 16, generator=gen())
    valid = torch.ones(2, 1, 16, 16)
    valid[..., :8] = 0
    spec_free = ViewMaker(
        method.modality,
        data.shape[2:],
        method.encoder.tokenizer.size_multiple,
        overrides={"scale": (1.0, 1.0), "aspect": (1.0, 1.0), "flip": 0.0},
    )

    def loss(targets: torch.Tensor) -> float:
        ctx = StepContext(0, 1, 1e-3, 0.05, 0.99, spec_free, gen(5))
        original = method.encoder.tokenizer.reconstruction_target
        method.encoder.tokenizer.reconstruction_target = lambda *a, **k: original(*a, **k) + targets
        try:
            return float(method(Batch(data, torch.full((2,), -1), valid=valid), ctx).loss.detach())
        finally:
            del method.encoder.tokenizer.reconstruction_target

    plain = loss(torch.zeros(2, 16, 48))
    outside = torch.zeros(2, 16, 48)
    outside[:, [0, 1, 4, 5, 8, 9, 12, 13]] = 100.0
    assert loss(outside) == plain
    assert loss(torch.full((2, 16, 48), 100.0)) != plain


# --- dual masking (VideoMAE V2) -----------------------------------------------------------


def test_dual_masking_decodes_the_visible_tokens_and_a_share_of_the_hidden_ones() -> None:
    """Video at 90% tube masking with decoder_mask_ratio 0.5: of 8 tokens (2 in time x 4 in
    space) the encoder sees one tube (2) and the decoder runs on 4 (8 - 0.5 x 8): those 2 and
    2 of the 6 hidden ones."""
    method = build_mae(
        Video(), (4, 16, 16), 3, {"patch_size": 8, "tubelet": 2}, decoder_mask_ratio=0.5
    )
    seen: list[torch.Tensor] = []
    method.decoder.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    out = method.reconstruct(torch.randn(3, 3, 4, 16, 16), gen())
    assert out.mask.shape == (3, 8) and out.visible.shape == (3, 2)
    assert out.decoded.shape == (3, 4) and out.pred.shape[:2] == (3, 4)
    assert seen[0].shape[:2] == (3, 1 + 4)  # the class token and the decoded tokens only
    for decoded, visible, mask in zip(out.decoded, out.visible, out.mask, strict=True):
        assert decoded.tolist() == sorted(set(decoded.tolist()))
        assert set(visible.tolist()) <= set(decoded.tolist())
        assert int(mask[decoded].sum()) == 2
    assert torch.equal(out.decoded_mask, out.mask.gather(1, out.decoded))
    full = method.reconstruct(torch.randn(3, 3, 4, 16, 16), gen(), decode_all=True)
    assert full.pred.shape[:2] == (3, 8) and full.decoded.shape == (3, 8)


def test_dual_masked_loss_is_the_mse_over_the_decoded_hidden_tokens() -> None:
    method = image_mae(decoder_mask_ratio=0.5)
    view = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = method.reconstruct(view, gen(4))
    target = normalized_patches(view, (4, 4))  # (B, 16, 48) for every token
    errors = [
        float(((out.pred[b, k] - target[b, int(n)]) ** 2).mean())
        for b in range(2)
        for k, n in enumerate(out.decoded[b])
        if out.mask[b, n]
    ]
    assert len(errors) == 2 * (8 - 4)  # 8 decoded tokens per sample, 4 of them visible
    picked = target.gather(1, out.decoded.unsqueeze(-1).expand(-1, -1, 48))
    loss = method.modality.reconstruction_loss(out.pred, picked, out.decoded_mask)
    assert math.isclose(float(loss), sum(errors) / len(errors), rel_tol=1e-5)
    assert math.isfinite(forward_loss(method, torch.rand(4, 3, 16, 16, generator=gen()), 0))


def test_a_decoder_mask_ratio_that_leaves_no_hidden_token_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"method\.decoder_mask_ratio must be in"):
        image_mae(mask_ratio=0.5, decoder_mask_ratio=0.5)


def brute_force_chamfer(a: list[list[float]], b: list[list[float]]) -> float:
    """Chamfer-L2 from its definition: mean nearest squared distance a->b plus b->a."""

    def nearest(p: list[float], points: list[list[float]]) -> float:
        return min(sum((x - y) ** 2 for x, y in zip(p, q, strict=True)) for q in points)

    return sum(nearest(p, b) for p in a) / len(a) + sum(nearest(q, a) for q in b) / len(b)


def test_points_use_chamfer_on_hidden_groups_only() -> None:
    method = points_mae()
    assert method.mask_ratio == 0.6
    cloud = torch.nn.functional.normalize(torch.randn(2, 128, 3, generator=gen()), dim=-1)
    out = method.reconstruct(cloud, gen(2))
    assert out.pred.shape == (2, 16, 8 * 3)
    assert out.mask.sum(dim=1).tolist() == [masked_count(16, 0.6)] * 2
    target = method.encoder.tokenizer.reconstruction_target(cloud, out.tokens)
    loss = method.modality.reconstruction_loss(out.pred, target, out.mask)

    pred = out.pred.detach()
    per_group = [
        brute_force_chamfer(pred[b, g].view(8, 3).tolist(), target[b, g].view(8, 3).tolist())
        for b in range(2)
        for g in range(16)
        if out.mask[b, g]
    ]
    assert math.isclose(float(loss.detach()), sum(per_group) / len(per_group), rel_tol=1e-5)
    loss.backward()
    assert method.decoder.head.weight.grad is not None
    assert method.encoder.tokenizer.encoder.first[0].weight.grad is not None


# --- parameters: gradients, decay and federated scopes ----------------------------------------


@pytest.mark.parametrize(
    ("modality", "size", "channels", "options"),
    [
        (Image2D(), (16, 16), 3, {"patch_size": 4}),
        (Volume3D(), (8, 8, 8), 1, {"patch_size": 4}),
        (Video(), (4, 16, 16), 3, {"patch_size": 8, "tubelet": 2}),
        (Points(), (128,), 4, {"num_groups": 16, "group_size": 8}),
    ],
)
def test_every_trainable_parameter_gets_a_gradient(
    modality: Modality, size: tuple[int, ...], channels: int, options: dict
) -> None:
    """DDP's reducer waits for every trainable parameter: none may be left without a gradient."""
    method = build_mae(modality, size, channels, options)
    data = torch.randn(
        2, *((size[0], channels) if modality.name == "points" else (channels, *size))
    )
    out = method.reconstruct(data, gen())
    target = method.encoder.tokenizer.reconstruction_target(data, out.tokens)
    method.modality.reconstruction_loss(out.pred, target, out.mask).backward()
    missing = [name for name, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert not method.encoder.mask_token.requires_grad


def test_scopes_share_the_trunk_and_keep_tokenizer_and_decoder_per_domain() -> None:
    scopes = image_mae().scopes()
    assert scopes["encoder.trunk.blocks.0.attn.qkv.weight"] == Scope.SHARED
    assert scopes["encoder.trunk.cls_token"] == Scope.SHARED
    assert scopes["encoder.tokenizer.proj.weight"] == Scope.DOMAIN
    assert scopes["decoder.blocks.0.mlp.fc1.weight"] == Scope.DOMAIN
    assert scopes["decoder.mask_token"] == Scope.DOMAIN
    assert {key for key, s in scopes.items() if s == Scope.SHARED} == {
        key for key in scopes if key.startswith("encoder.trunk.")
    }


def test_decoder_mask_token_and_positions_are_not_weight_decayed() -> None:
    method = image_mae()
    no_decay = {id(p) for p in method.parameter_groups()[1]["params"]}
    assert id(method.decoder.mask_token) in no_decay
    assert id(method.decoder.pos.weight) not in no_decay  # a linear projection decays


def test_decoder_positions_come_from_the_tokenizer() -> None:
    """Two tokens that differ only in position get different predictions: the decoder sees where
    each hidden token is, through the projection of the tokenizer's positional embedding."""
    method = image_mae().eval()
    out = method.reconstruct(torch.zeros(1, 3, 16, 16), gen())
    hidden = out.mask[0].nonzero().flatten()
    first, second = out.pred[0, hidden[0]], out.pred[0, hidden[1]]
    assert not torch.allclose(first, second)
    with torch.no_grad():
        method.decoder.pos.weight.zero_()
        method.decoder.pos.bias.zero_()
    out = method.reconstruct(torch.zeros(1, 3, 16, 16), gen())
    assert torch.allclose(out.pred[0, hidden[0]], out.pred[0, hidden[1]], atol=1e-6)


# --- per-modality settings ------------------------------------------------------------------


def test_modality_settings_come_from_config() -> None:
    config = OmegaConf.load(core_config_dir() / "method" / "mae.yaml").method
    assert for_modality(config, "image2d", "method").mask_ratio == 0.75
    assert for_modality(config, "volume3d", "method").decoder.depth == 8
    video = for_modality(config, "video", "method")
    assert video.mask_ratio == 0.9 and video.decoder.embed_dim == 384
    assert video.decoder.mlp_ratio == 4.0  # untouched keys keep the method's value
    points = for_modality(config, "points", "method")
    assert points.mask_ratio == 0.6 and list(points.views["global"].scale) == [1.0, 1.0]
    assert points.views["global"].jitter == 0.0
    assert "by_modality" not in points
    # Point-MAE's optimiser: 1e-3 at batch 128 is 2e-3 per 256, AdamW's default betas
    trainer = OmegaConf.load(core_config_dir() / "method" / "mae.yaml").trainer
    assert for_modality(trainer, "points", "trainer").lr * 128 / 256 == 1e-3
    assert list(for_modality(trainer, "points", "trainer").betas) == [0.9, 0.999]
    assert for_modality(trainer, "image2d", "trainer").lr == 1.5e-4


def test_a_misspelt_modality_override_fails_clearly() -> None:
    config = OmegaConf.load(core_config_dir() / "method" / "mae.yaml").method
    config.by_modality.video.mask_ratoi = 0.8
    with pytest.raises(ConfigError, match=r"method\.by_modality\.video.*mask_ratoi"):
        for_modality(config, "video", "method")


def test_mae_wants_one_view_and_a_ratio_below_one() -> None:
    with pytest.raises(ConfigError, match="count must be 1"):
        image_mae(**{"views.global.count": 2})
    with pytest.raises(ConfigError, match="mask_ratio"):
        image_mae(mask_ratio=1.0)


# --- the reconstruction picture -------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "patch"), [((2, 3, 8, 12), (4, 4)), ((2, 1, 4, 8, 8), (2, 4, 4))]
)
def test_unpatchify_inverts_patchify(shape: tuple[int, ...], patch: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=gen())
    grid = [s // p for s, p in zip(shape[2:], patch, strict=True)]
    assert torch.equal(unpatchify(patchify(x, patch), patch, grid), x)


def test_a_perfect_prediction_reconstructs_the_input_and_masked_patches_are_grey() -> None:
    view = torch.randn(2, 3, 8, 8, generator=gen())
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    original, masked, reconstruction = reconstruction_panels(
        view, normalized_patches(view, (4, 4)), mask, (4, 4)
    )
    assert torch.allclose(reconstruction, original, atol=1e-4)
    assert original.min() == 0.0 and original.amax(dim=(2, 3)).eq(1.0).all()
    assert (masked[0, :, :4, 4:] == 0.5).all() and (masked[1, :, 4:, 4:] == 0.5).all()
    assert torch.equal(masked[0, :, :4, :4], original[0, :, :4, :4])


def test_a_perfect_raw_pixel_prediction_also_reconstructs_the_input() -> None:
    """method.normalize_target=false: the prediction is of the patches' own pixels."""
    view = torch.randn(2, 3, 8, 8, generator=gen())
    mask = torch.ones(2, 4, dtype=torch.bool)
    original, _, reconstruction = reconstruction_panels(
        view, patchify(view, (4, 4)), mask, (4, 4), normalized=False
    )
    assert torch.allclose(reconstruction, original, atol=1e-5)


def test_unnormalised_targets_are_the_raw_patches_and_the_loss_uses_them() -> None:
    """The hidden tokens' loss under normalize_target=false is the MSE against the patches'
    pixels as they are (by hand), not against normalised ones."""
    method = image_mae(normalize_target=False)
    view = 3 + torch.rand(2, 3, 16, 16, generator=gen())  # a level normalisation would remove
    out = method.reconstruct(view, gen())
    target = method.encoder.tokenizer.reconstruction_target(view, out.tokens, False)
    for sample in range(2):
        for token in out.mask[sample].nonzero().flatten().tolist():
            row, col = divmod(token, 4)
            pixels = view[sample, :, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4]
            assert torch.equal(target[sample, token], pixels.permute(1, 2, 0).flatten())
    loss = method.modality.reconstruction_loss(out.pred, target, out.mask)
    hand = ((out.pred - target) ** 2).mean(dim=-1)[out.mask].mean()
    assert float(loss) == pytest.approx(float(hand), rel=1e-5)
    assert float(target[out.mask].mean()) > 2.5  # the level is kept


def test_the_grid_is_a_valid_png_of_three_panels_per_sample(tmp_path: Path) -> None:
    view = torch.rand(3, 1, 16, 16, generator=gen())
    mask = torch.rand(3, 16, generator=gen(1)) < 0.5
    image = reconstruction_grid(view, torch.randn(3, 16, 16), mask, (4, 4))
    assert image.dtype == torch.uint8
    write_png(tmp_path / "grid.png", image)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left
    decoded = Image.open(tmp_path / "grid.png")
    assert decoded.mode == "RGB"
    assert decoded.size == (3 * 96 + 4 * 2, 3 * 96 + 4 * 2)  # 16 px zoomed 6x, 2 px gutters
    assert torch.equal(torch.from_numpy(np.asarray(decoded).copy()), image)
