"""``init=PATH``: an encoder started from DINOv2, timm and fmcore weights on disk.

The DINOv2 checkpoints are written key by key from facebookresearch/dinov2's
``DinoVisionTransformer`` (pos_embed (1, 1 + N, D) with registers inserted after the positions
are added, ``mask_token`` (1, D), SwiGLU ``w12``/``w3``, chunked blocks, a ``teacher`` wrapper)
and checked against a forward pass written here from that model's code, not against fmcore's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_RUN, antialiased_bicubic_half, fmcore
from safetensors.torch import load_file, save_file
from torch import Tensor

from fmcore.backbones.vit import VisionTransformer, ViTConfig
from fmcore.encoder import Encoder
from fmcore.errors import ConfigError
from fmcore.modalities.grid import GridTokenizer
from fmcore.pretrained import load_pretrained
from fmcore.run_files import ENCODER_CONFIG_KEY, ENCODER_FORMAT, FORMAT_KEY
from fmcore.timm_layout import to_timm_state_dict

D, DEPTH, HEADS, C, P, SIZE = 48, 2, 3, 3, 8, 32
SWIGLU_HIDDEN = (int(4 * D * 2 / 3) + 7) // 8 * 8  # DINOv2's SwiGLUFFNFused sizing: 128


def encoder(registers: int, ffn: str, size: int = SIZE) -> Encoder:
    config = ViTConfig(
        embed_dim=D, depth=DEPTH, num_heads=HEADS, num_registers=registers, layerscale=1e-5, ffn=ffn
    )
    return Encoder(GridTokenizer(D, C, (P, P), (size, size)), VisionTransformer(config)).eval()


def dinov2_backbone(registers: int, swiglu: bool, grid: int = SIZE // P) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(7)

    def rand(*shape: int, scale: float = 0.3) -> Tensor:
        return torch.randn(*shape, generator=generator) * scale

    state = {
        "cls_token": rand(1, 1, D),
        "pos_embed": rand(1, 1 + grid * grid, D),
        "mask_token": rand(1, D),
        "patch_embed.proj.weight": rand(D, C, P, P, scale=0.05),
        "patch_embed.proj.bias": rand(D),
        "norm.weight": 1 + rand(D),
        "norm.bias": rand(D),
    }
    if registers:
        state["register_tokens"] = rand(1, registers, D)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            state[b + norm + ".weight"], state[b + norm + ".bias"] = 1 + rand(D), rand(D)
        state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"] = rand(3 * D, D), rand(3 * D)
        state[b + "attn.proj.weight"], state[b + "attn.proj.bias"] = rand(D, D), rand(D)
        state[b + "ls1.gamma"], state[b + "ls2.gamma"] = rand(D), rand(D)
        if swiglu:
            state[b + "mlp.w12.weight"] = rand(2 * SWIGLU_HIDDEN, D)
            state[b + "mlp.w12.bias"] = rand(2 * SWIGLU_HIDDEN)
            state[b + "mlp.w3.weight"] = rand(D, SWIGLU_HIDDEN)
            state[b + "mlp.w3.bias"] = rand(D)
        else:
            state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"] = rand(4 * D, D), rand(4 * D)
            state[b + "mlp.fc2.weight"], state[b + "mlp.fc2.bias"] = rand(D, 4 * D), rand(D)
    return state


def dinov2_forward(state: dict[str, Tensor], x: Tensor, registers: int, swiglu: bool) -> Tensor:
    """DinoVisionTransformer.forward_features' x_norm (B, 1 + R + N, D) at the native grid."""
    x = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=P)
    x = x.flatten(2).transpose(1, 2)
    batch = x.shape[0]
    x = torch.cat([state["cls_token"].expand(batch, -1, -1), x], dim=1) + state["pos_embed"]
    if registers:
        x = torch.cat([x[:, :1], state["register_tokens"].expand(batch, -1, -1), x[:, 1:]], dim=1)
    tokens, head_dim = x.shape[1], D // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (D,), state[b + "norm1.weight"], state[b + "norm1.bias"], 1e-6)
        q, k, v = (
            (h @ state[b + "attn.qkv.weight"].T + state[b + "attn.qkv.bias"])
            .reshape(batch, tokens, 3, HEADS, head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        h = (attention @ v).transpose(1, 2).reshape(batch, tokens, D)
        h = h @ state[b + "attn.proj.weight"].T + state[b + "attn.proj.bias"]
        x = x + state[b + "ls1.gamma"] * h
        h = F.layer_norm(x, (D,), state[b + "norm2.weight"], state[b + "norm2.bias"], 1e-6)
        if swiglu:
            x1, x2 = (h @ state[b + "mlp.w12.weight"].T + state[b + "mlp.w12.bias"]).chunk(2, -1)
            h = (F.silu(x1) * x2) @ state[b + "mlp.w3.weight"].T + state[b + "mlp.w3.bias"]
        else:
            h = F.gelu(h @ state[b + "mlp.fc1.weight"].T + state[b + "mlp.fc1.bias"])
            h = h @ state[b + "mlp.fc2.weight"].T + state[b + "mlp.fc2.bias"]
        x = x + state[b + "ls2.gamma"] * h
    return F.layer_norm(x, (D,), state["norm.weight"], state["norm.bias"], 1e-6)


def chunked(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Block i in chunk i (DINOv2's block_chunks=DEPTH): ``blocks.<chunk>.<i>.``."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            key = ".".join(["blocks", parts[1], *parts[1:]])
        out[key] = value
    return out


@pytest.mark.parametrize(
    ("registers", "swiglu", "wrap"),
    [(4, True, "training"), (0, False, "release"), (2, False, "release")],
)
def test_dinov2_checkpoint_gives_the_reference_outputs(tmp_path, registers, swiglu, wrap):
    backbone = dinov2_backbone(registers, swiglu)
    path = tmp_path / "dinov2.pth"
    if wrap == "training":  # teacher_checkpoint.pth-like, with a student beside it
        student = {f"backbone.{k}": v + 1 for k, v in chunked(backbone).items()}
        teacher = {f"backbone.{k}": v for k, v in chunked(backbone).items()}
        torch.save({"student": student, "teacher": teacher, "iteration": 3}, path)
    else:
        torch.save(backbone, path)
    target = encoder(registers, "swiglu" if swiglu else "mlp")
    loaded = load_pretrained(target, path)

    assert loaded.layout == "dinov2"
    assert loaded.prefix == ("teacher.backbone." if wrap == "training" else "")
    x = torch.randn(2, C, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dinov2_forward(backbone, x, registers, swiglu)
        out = target(x)
    torch.testing.assert_close(out.cls, expected[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.registers, expected[:, 1 : 1 + registers], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.patches, expected[:, 1 + registers :], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target.mask_token.detach()[0], backbone["mask_token"])


def test_timm_positions_at_another_grid_are_resampled_with_antialiasing(tmp_path):
    source = encoder(0, "mlp", size=2 * SIZE)  # an 8 x 8 grid, loaded into a 4 x 4 one
    timm = {**to_timm_state_dict(source), "head.weight": torch.zeros(10, D)}
    path = tmp_path / "vit.safetensors"
    save_file(timm, str(path))
    target = encoder(0, "mlp")
    loaded = load_pretrained(target, path)

    assert (loaded.layout, loaded.ignored) == ("timm", ["head.weight"])
    native = source.tokenizer.pos_embed.detach().reshape(8, 8, D).double().numpy()
    m = antialiased_bicubic_half(8)
    expected = np.einsum("ih,jw,hwd->ijd", m, m, native).reshape(1, 16, D)
    np.testing.assert_allclose(target.tokenizer.pos_embed.detach().numpy(), expected, atol=1e-5)
    assert target.trunk.blocks[1].mlp.fc2.weight.equal(source.trunk.blocks[1].mlp.fc2.weight)


def test_fmcore_encoder_file_at_another_grid_loads_resampled(tmp_path):
    source = encoder(2, "mlp", size=2 * SIZE)
    path = tmp_path / "encoder.safetensors"
    metadata = {ENCODER_CONFIG_KEY: "{}", FORMAT_KEY: ENCODER_FORMAT}
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path), metadata)
    target = encoder(2, "mlp")
    loaded = load_pretrained(target, path)

    assert (loaded.layout, loaded.resampled_from) == ("fmcore", (8, 8))
    assert target.trunk.reg_token.equal(source.trunk.reg_token)
    native = source.tokenizer.pos_embed.detach().reshape(8, 8, D).double().numpy()
    m = antialiased_bicubic_half(8)
    expected = np.einsum("ih,jw,hwd->ijd", m, m, native).reshape(1, 16, D)
    np.testing.assert_allclose(target.tokenizer.pos_embed.detach().numpy(), expected, atol=1e-5)


def test_weights_that_do_not_fit_name_the_file_and_the_config_key(tmp_path):
    wrong_patch = tmp_path / "patch16.pth"
    backbone = dinov2_backbone(0, False)
    backbone["patch_embed.proj.weight"] = torch.zeros(D, C, 16, 16)
    torch.save(backbone, wrong_patch)
    with pytest.raises(ConfigError, match=r"(?s)patch16\.pth.*encoder\.tokenizer\.patch_size=16"):
        load_pretrained(encoder(0, "mlp"), wrong_patch)

    wrong_ffn = tmp_path / "swiglu.pth"
    torch.save(dinov2_backbone(0, True), wrong_ffn)
    with pytest.raises(ConfigError, match=r"(?s)swiglu\.pth.*encoder\.vit\.ffn=swiglu"):
        load_pretrained(encoder(0, "mlp"), wrong_ffn)

    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(b"\x08\x00")
    with pytest.raises(ConfigError, match=r"init=.*cut\.safetensors: not a readable"):
        load_pretrained(encoder(0, "mlp"), truncated)

    old_format = tmp_path / "encoder_v1.safetensors"
    metadata = {ENCODER_CONFIG_KEY: "{}", FORMAT_KEY: "fmcore.encoder/1"}
    save_file({"x": torch.zeros(1)}, str(old_format), metadata)
    with pytest.raises(ConfigError, match=r"encoder_v1\.safetensors is an encoder file of format"):
        load_pretrained(encoder(0, "mlp"), old_format)

    garbage = tmp_path / "notes.pth"
    garbage.write_text("not weights")
    with pytest.raises(ConfigError, match=r"init=.*notes\.pth: not a PyTorch weights file"):
        load_pretrained(encoder(0, "mlp"), garbage)


def test_train_continues_from_timm_weights(tmp_path: Path) -> None:
    """``fmcore train init=<timm file>``: after one small step the run's encoder is still the
    file's (resampled to digits' 4 x 4 grid), far from a random start."""
    dim, patch = 64, 4  # SMALL_RUN's width; digits' patch
    generator = torch.Generator().manual_seed(3)
    timm = {
        "cls_token": torch.randn(1, 1, dim, generator=generator),
        "pos_embed": torch.randn(1, 1 + 64, dim, generator=generator),  # an 8 x 8 grid
        "patch_embed.proj.weight": torch.randn(dim, 1, patch, patch, generator=generator),
        "patch_embed.proj.bias": torch.randn(dim, generator=generator),
        "norm.weight": torch.ones(dim),
        "norm.bias": torch.zeros(dim),
    }
    for i in range(2):
        b = f"blocks.{i}."
        shapes = {
            "norm1.weight": (dim,),
            "norm1.bias": (dim,),
            "attn.qkv.weight": (3 * dim, dim),
            "attn.qkv.bias": (3 * dim,),
            "attn.proj.weight": (dim, dim),
            "attn.proj.bias": (dim,),
            "norm2.weight": (dim,),
            "norm2.bias": (dim,),
            "mlp.fc1.weight": (4 * dim, dim),
            "mlp.fc1.bias": (4 * dim,),
            "mlp.fc2.weight": (dim, 4 * dim),
            "mlp.fc2.bias": (dim,),
        }
        for key, shape in shapes.items():
            timm[b + key] = torch.randn(*shape, generator=generator) * 0.3
    weights = tmp_path / "vit_tiny_timm.safetensors"
    save_file(timm, str(weights))

    run = tmp_path / "run"
    fmcore(
        "train",
        *SMALL_RUN,
        "trainer.max_steps=1",
        "trainer.log_every=1",
        f"init={weights}",
        f"run.dir={run}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    trained = load_file(str(run / "encoder.safetensors"))
    step = 5e-3  # one AdamW step moves a weight by about the learning rate (5e-4 at most)
    for key in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "cls_token"):
        torch.testing.assert_close(trained[f"trunk.{key}"], timm[key], atol=step, rtol=0)
    resampled = np.einsum(
        "ih,jw,hwd->ijd",
        antialiased_bicubic_half(8),
        antialiased_bicubic_half(8),
        timm["pos_embed"][0, 1:].reshape(8, 8, dim).double().numpy(),
    ).reshape(1, 16, dim)
    np.testing.assert_allclose(trained["tokenizer.pos_embed"].numpy(), resampled, atol=step)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
