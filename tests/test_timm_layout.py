"""timm VisionTransformer state-dict layout: key names, round trips, an independent forward pass,
pos_embed resampling and clear errors.

The expected layout is written out from timm/models/vision_transformer.py (VisionTransformer,
Block, _pos_embed) and timm/layers (Attention, Mlp, LayerScale, PatchEmbed, LayerNorm eps 1e-6);
timm itself is not imported.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open
from torch import Tensor

from fmcore.backbones.vit import VisionTransformer, ViTConfig
from fmcore.encoder import Encoder
from fmcore.modalities.grid import GridTokenizer
from fmcore.timm_layout import (
    export_timm,
    import_timm,
    load_timm_state_dict,
    to_timm_state_dict,
)

D, DEPTH, HEADS, C, P = 48, 2, 3, 3, 8


def make_encoder(
    registers: int = 0,
    layerscale: float | None = 1e-5,
    size: tuple[int, ...] = (32, 32),
    dim: int = D,
    heads: int = HEADS,
    seed: int = 0,
) -> Encoder:
    """A small encoder whose every parameter is random, so no block is a near-identity."""
    torch.manual_seed(seed)
    patch = (P,) * len(size)
    config = ViTConfig(
        embed_dim=dim, depth=DEPTH, num_heads=heads, num_registers=registers, layerscale=layerscale
    )
    encoder = Encoder(GridTokenizer(dim, C, patch, size), VisionTransformer(config))
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma")):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(std=0.3)
    return encoder.eval()


def timm_layout(
    registers: int, layerscale: bool, no_embed_class: bool, patches: int = 16
) -> list[tuple[str, tuple[int, ...]]]:
    """timm's VisionTransformer state-dict keys and shapes, in registration order, for the small
    config (qkv_bias=True, mlp_ratio=4, global_pool='token', num_classes=0)."""
    prefix = 0 if no_embed_class else 1 + registers
    keys = [("cls_token", (1, 1, D))]
    keys += [("reg_token", (1, registers, D))] if registers else []
    keys += [
        ("pos_embed", (1, prefix + patches, D)),
        ("patch_embed.proj.weight", (D, C, P, P)),
        ("patch_embed.proj.bias", (D,)),
    ]
    for i in range(DEPTH):
        b = f"blocks.{i}."
        keys += [(b + "norm1.weight", (D,)), (b + "norm1.bias", (D,))]
        keys += [(b + "attn.qkv.weight", (3 * D, D)), (b + "attn.qkv.bias", (3 * D,))]
        keys += [(b + "attn.proj.weight", (D, D)), (b + "attn.proj.bias", (D,))]
        keys += [(b + "ls1.gamma", (D,))] if layerscale else []
        keys += [(b + "norm2.weight", (D,)), (b + "norm2.bias", (D,))]
        keys += [(b + "mlp.fc1.weight", (4 * D, D)), (b + "mlp.fc1.bias", (4 * D,))]
        keys += [(b + "mlp.fc2.weight", (D, 4 * D)), (b + "mlp.fc2.bias", (D,))]
        keys += [(b + "ls2.gamma", (D,))] if layerscale else []
    return [*keys, ("norm.weight", (D,)), ("norm.bias", (D,))]


def timm_forward(
    state: dict[str, Tensor], x: Tensor, registers: int, no_embed_class: bool
) -> tuple[Tensor, Tensor]:
    """timm's VisionTransformer.forward_features from the state dict with plain torch ops;
    returns (cls (B, D), patches (B, N, D))."""
    eps = 1e-6
    x = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=P)
    x = x.flatten(2).transpose(1, 2)  # (B, N, D)
    batch, dim = x.shape[0], x.shape[2]
    prefix = [state["cls_token"].expand(batch, -1, -1)]
    if registers:
        prefix.append(state["reg_token"].expand(batch, -1, -1))
    if no_embed_class:
        x = torch.cat([*prefix, x + state["pos_embed"]], dim=1)
    else:
        x = torch.cat([*prefix, x], dim=1) + state["pos_embed"]
    tokens, head_dim = x.shape[1], dim // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (dim,), state[b + "norm1.weight"], state[b + "norm1.bias"], eps)
        qkv = h @ state[b + "attn.qkv.weight"].T + state[b + "attn.qkv.bias"]
        q, k, v = qkv.reshape(batch, tokens, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        h = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        h = h @ state[b + "attn.proj.weight"].T + state[b + "attn.proj.bias"]
        x = x + state[b + "ls1.gamma"] * h
        h = F.layer_norm(x, (dim,), state[b + "norm2.weight"], state[b + "norm2.bias"], eps)
        h = h @ state[b + "mlp.fc1.weight"].T + state[b + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        h = h @ state[b + "mlp.fc2.weight"].T + state[b + "mlp.fc2.bias"]
        x = x + state[b + "ls2.gamma"] * h
    x = F.layer_norm(x, (dim,), state["norm.weight"], state["norm.bias"], eps)
    return x[:, 0], x[:, 1 + registers :]


def images(seed: int = 1, size: int = 32) -> Tensor:
    return torch.randn(2, C, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("registers", "layerscale", "no_embed_class"),
    [(0, None, False), (0, 1e-5, False), (4, 1e-5, False), (4, 1e-5, True), (2, None, True)],
)
def test_exported_keys_match_timm_layout(registers, layerscale, no_embed_class):
    state = to_timm_state_dict(make_encoder(registers, layerscale), no_embed_class=no_embed_class)
    exported = [(key, tuple(value.shape)) for key, value in state.items()]
    assert exported == timm_layout(registers, layerscale is not None, no_embed_class)


@pytest.mark.parametrize(("registers", "no_embed_class"), [(0, False), (4, True)])
def test_default_export_is_the_layout_timm_builds_such_models_with(registers, no_embed_class):
    """timm builds its register models (vit_*_reg4_dinov2, vit_*_reg*_gap) with
    no_embed_class=True and its plain ViTs (vit_small_patch16_224) with False."""
    state = to_timm_state_dict(make_encoder(registers))
    exported = [(key, tuple(value.shape)) for key, value in state.items()]
    assert exported == timm_layout(registers, True, no_embed_class)


def test_register_rows_of_pos_embed_are_zero():
    encoder = make_encoder(registers=4)
    pos = to_timm_state_dict(encoder, no_embed_class=False)["pos_embed"]
    torch.testing.assert_close(pos[:, 0], encoder.trunk.cls_pos[:, 0].detach())
    assert pos[:, 1:5].abs().max() == 0
    torch.testing.assert_close(pos[:, 5:], encoder.tokenizer.pos_embed.detach())


@pytest.mark.parametrize(("registers", "no_embed_class"), [(0, False), (2, False), (2, True)])
def test_round_trip_gives_identical_outputs_and_state(registers, no_embed_class):
    source = make_encoder(registers, seed=0)
    target = make_encoder(registers, seed=1)
    with torch.no_grad():
        target.mask_token.fill_(3.0)
    ignored = load_timm_state_dict(target, to_timm_state_dict(source, no_embed_class))
    assert ignored == []
    assert target.mask_token.eq(3.0).all()  # timm has no mask token: left alone

    x = images()
    want, got = source(x), target(x)
    torch.testing.assert_close(got.cls, want.cls, rtol=0, atol=0)
    torch.testing.assert_close(got.registers, want.registers, rtol=0, atol=0)
    torch.testing.assert_close(got.patches, want.patches, rtol=0, atol=0)

    source_state, target_state = source.state_dict(), target.state_dict()
    folded = {"mask_token"} | ({"trunk.cls_token", "trunk.cls_pos"} if no_embed_class else set())
    for key, value in source_state.items():
        if key not in folded:
            assert torch.equal(target_state[key], value), key
    if no_embed_class:  # the class token's position is folded into cls_token
        torch.testing.assert_close(
            target_state["trunk.cls_token"] + target_state["trunk.cls_pos"],
            source_state["trunk.cls_token"] + source_state["trunk.cls_pos"],
        )


@pytest.mark.parametrize(("registers", "no_embed_class"), [(0, False), (4, False), (4, True)])
def test_independent_timm_forward_matches_encoder(registers, no_embed_class):
    encoder = make_encoder(registers)
    state = to_timm_state_dict(encoder, no_embed_class)
    x = images()
    cls, patches = timm_forward(state, x, registers, no_embed_class)
    with torch.no_grad():
        out = encoder(x)
    torch.testing.assert_close(out.cls, cls)
    torch.testing.assert_close(out.patches, patches)


@pytest.mark.parametrize("source_size", [112, 16])  # 14x14 and 2x2 grids into a 4x4 encoder
def test_pos_embed_at_another_grid_is_resampled(source_size):
    source = make_encoder(size=(source_size, source_size))
    state = to_timm_state_dict(source)
    target = make_encoder(seed=1)
    load_timm_state_dict(target, state)
    side = source_size // P
    pos = state["pos_embed"][:, 1:].reshape(1, side, side, D).permute(0, 3, 1, 2)
    want = F.interpolate(pos, size=(4, 4), mode="bicubic", antialias=True)
    assert target.tokenizer.pos_embed.shape == (1, 16, D)
    torch.testing.assert_close(target.tokenizer.pos_embed, want.flatten(2).transpose(1, 2))
    torch.testing.assert_close(target.trunk.cls_pos, state["pos_embed"][:, :1])
    assert torch.equal(target.trunk.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    cls, _ = timm_forward(to_timm_state_dict(target), images(), 0, False)
    with torch.no_grad():
        torch.testing.assert_close(target(images()).cls, cls)


def test_non_square_source_grid_needs_and_uses_source_grid():
    state = to_timm_state_dict(make_encoder(size=(16, 48)))  # grid (2, 6): 12 patches
    with pytest.raises(ValueError, match=r"pos_embed: checkpoint \(1, 13, 48\) has no reading"):
        load_timm_state_dict(make_encoder(seed=1), state)  # 12 rows: no square grid
    target = make_encoder(seed=1)
    load_timm_state_dict(target, state, source_grid=(2, 6))
    pos = state["pos_embed"][:, 1:].reshape(1, 2, 6, D).permute(0, 3, 1, 2)
    want = F.interpolate(pos, size=(4, 4), mode="bicubic", antialias=True)
    torch.testing.assert_close(target.tokenizer.pos_embed, want.flatten(2).transpose(1, 2))


def test_wrong_width_fails_naming_the_keys():
    state = to_timm_state_dict(make_encoder())
    wide = make_encoder(dim=64, heads=4)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_timm_state_dict(wide, state)
    message = str(error.value)
    assert "cls_token: checkpoint (1, 1, 48), encoder (1, 1, 64)" in message
    assert "blocks.0.attn.qkv.weight: checkpoint (144, 48), encoder (192, 64)" in message
    assert "pos_embed" in message
    assert all(torch.equal(v, before[k]) for k, v in wide.state_dict().items())  # untouched


def test_missing_and_unexpected_keys_are_listed():
    with pytest.raises(ValueError, match=r"unexpected keys: blocks\.0\.ls1\.gamma"):
        load_timm_state_dict(make_encoder(layerscale=None), to_timm_state_dict(make_encoder()))
    with pytest.raises(ValueError, match=r"missing keys: blocks\.0\.ls1\.gamma"):
        load_timm_state_dict(make_encoder(), to_timm_state_dict(make_encoder(layerscale=None)))
    with pytest.raises(ValueError, match="missing keys: reg_token"):
        load_timm_state_dict(make_encoder(registers=4), to_timm_state_dict(make_encoder()))


def test_classifier_keys_are_ignored_but_fc_norm_cannot_stand_in_for_norm():
    state = to_timm_state_dict(make_encoder())
    state["head.weight"], state["head.bias"] = torch.randn(10, D), torch.randn(10)
    assert load_timm_state_dict(make_encoder(seed=1), state) == ["head.weight", "head.bias"]

    pooled = dict(state)  # timm global_pool='avg': norm is Identity, fc_norm follows the pooling
    pooled["fc_norm.weight"] = pooled.pop("norm.weight")
    pooled["fc_norm.bias"] = pooled.pop("norm.bias")
    with pytest.raises(ValueError, match=r"missing keys: norm\.weight, norm\.bias.*fc_norm"):
        load_timm_state_dict(make_encoder(seed=1), pooled)


def test_only_2d_grid_encoders_are_supported():
    volume = make_encoder(size=(16, 16, 16))
    with pytest.raises(ValueError, match="2D GridTokenizer"):
        to_timm_state_dict(volume)
    with pytest.raises(ValueError, match="2D GridTokenizer"):
        load_timm_state_dict(volume, {})


def test_safetensors_export_and_import(tmp_path):
    source, target = make_encoder(registers=2), make_encoder(registers=2, seed=1)
    path = tmp_path / "vit.safetensors"
    export_timm(source, path)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    on_disk = load_file(str(path))
    assert {k: tuple(v.shape) for k, v in on_disk.items()} == dict(timm_layout(2, True, True))
    assert import_timm(target, path) == []
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(target(x).patches, source(x).patches, rtol=0, atol=0)
