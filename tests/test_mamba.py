"""The Mamba trunk: the pure-PyTorch scan against a step-by-step recurrence (values and
gradients), the causal convolution against a hand loop, token order, causality, registers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import fmcore

from fmcore.backbones.mamba import Mamba, MambaConfig, sequence_order
from fmcore.backbones.selective_scan import (
    CHUNK,
    causal_conv1d_torch,
    cuda_kernels,
    selective_scan,
    selective_scan_torch,
)
from fmcore.config import compose, config_sources
from fmcore.errors import ConfigError
from fmcore.modalities.base import Tokens
from fmcore.plugin_manager import registry


def naive_scan(x, delta, A, B, C, D):
    """Mamba's recurrence one token at a time, in float64:
    h = exp(dt A) h + dt B x, y = C h + D x."""
    batch, length, channels = x.shape
    h = torch.zeros(batch, channels, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(length):
        dt = delta[:, t].double().unsqueeze(-1)  # (batch, channels, 1)
        h = torch.exp(dt * A.double()) * h + dt * B[:, t, None].double() * x[:, t, :, None].double()
        ys.append((h * C[:, t, None].double()).sum(-1) + D.double() * x[:, t].double())
    return torch.stack(ys, dim=1)


def scan_inputs(length: int, seed: int = 0, requires_grad: bool = False):
    generator = torch.Generator().manual_seed(seed)
    batch, channels, state = 2, 5, 4
    x = torch.randn(batch, length, channels, generator=generator)
    delta = torch.nn.functional.softplus(torch.randn(batch, length, channels, generator=generator))
    A = -torch.rand(channels, state, generator=generator) * 4 - 0.1
    B = torch.randn(batch, length, state, generator=generator)
    C = torch.randn(batch, length, state, generator=generator)
    D = torch.randn(channels, generator=generator)
    tensors = [x, delta, A, B, C, D]
    return [t.requires_grad_(requires_grad) for t in tensors]


@pytest.mark.parametrize("length", [1, 7, CHUNK, 2 * CHUNK + 13])
def test_pure_scan_equals_the_step_by_step_recurrence(length: int) -> None:
    inputs = scan_inputs(length)
    expected = naive_scan(*inputs)
    torch.testing.assert_close(
        selective_scan_torch(*inputs).double(), expected, rtol=1e-4, atol=1e-4
    )


def test_pure_scan_gradients_equal_the_recurrences() -> None:
    fast_inputs = scan_inputs(CHUNK + 9, requires_grad=True)
    slow_inputs = scan_inputs(CHUNK + 9, requires_grad=True)
    weights = torch.randn(2, CHUNK + 9, 5, generator=torch.Generator().manual_seed(5))
    (selective_scan_torch(*fast_inputs) * weights).sum().backward()
    (naive_scan(*slow_inputs) * weights.double()).sum().backward()
    for fast, slow in zip(fast_inputs, slow_inputs, strict=True):
        torch.testing.assert_close(fast.grad.double(), slow.grad.double(), rtol=1e-3, atol=1e-3)


def test_causal_convolution_sees_only_the_current_and_earlier_tokens() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, generator=generator)
    weight = torch.randn(3, 1, 4, generator=generator)
    bias = torch.randn(3, generator=generator)
    expected = torch.zeros(2, 3, 9)
    for t in range(9):
        for k in range(4):  # the kernel's last tap meets the current token
            source = t - 3 + k
            if source >= 0:
                expected[:, :, t] += weight[:, 0, k] * x[:, :, source]
    expected += bias[:, None]
    torch.testing.assert_close(causal_conv1d_torch(x, weight, bias), expected)


@pytest.mark.skipif(cuda_kernels() is None, reason="needs a GPU with mamba-ssm and causal-conv1d")
def test_cuda_kernels_agree_with_the_pure_scan() -> None:
    inputs = [t.cuda() for t in scan_inputs(300)]
    torch.testing.assert_close(
        selective_scan(*inputs, kernel="cuda"),
        selective_scan(*inputs, kernel="torch"),
        rtol=1e-3,
        atol=1e-3,
    )


@pytest.mark.skipif(cuda_kernels() is None, reason="needs a GPU with mamba-ssm and causal-conv1d")
def test_cuda_kernels_train_under_bf16_autocast_as_the_pure_scan_does() -> None:
    results = {}
    for kernel in ("cuda", "torch"):
        torch.manual_seed(0)
        trunk = Mamba(MambaConfig(embed_dim=64, depth=2, kernel=kernel)).cuda()
        x = torch.randn(2, 50, 64, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = trunk(Tokens(x=x, pos=torch.zeros_like(x[:1])))
        out.patches.float().sum().backward()
        results[kernel] = (out.patches.float(), trunk.blocks[0].mixer.in_proj.weight.grad)
    torch.testing.assert_close(results["cuda"][0], results["torch"][0], rtol=0.05, atol=0.05)
    torch.testing.assert_close(results["cuda"][1], results["torch"][1], rtol=0.1, atol=0.05)


def test_registers_sit_evenly_through_the_sequence_as_mamba_r_places_them() -> None:
    order, inverse = sequence_order(196, 12)  # 14 x 14 patches, Mamba-R's 12 registers
    register_positions = [i for i, token in enumerate(order.tolist()) if token < 12]
    assert register_positions == list(range(15, 192, 16))  # Mamba-R: arange(15, 15*13+12, 16)
    assert order.tolist()[:15] == list(range(12, 27))  # the first 15 patches, in order
    assert torch.equal(order[inverse], torch.arange(208))
    vim_order, _ = sequence_order(196, 0)
    assert vim_order.tolist().index(0) == 98  # Vim's class token in the middle


def tiny(**options) -> Mamba:
    return Mamba(MambaConfig(embed_dim=16, depth=2, d_state=4, **options)).eval()


def test_a_forward_only_mamba_never_lets_a_token_see_a_later_one() -> None:
    torch.manual_seed(0)
    base = Tokens(x=torch.randn(1, 9, 16), pos=torch.zeros(1, 9, 16))
    for bidirectional, earlier_moves in ((False, False), (True, True)):
        trunk = tiny(bidirectional=bidirectional, num_registers=0)
        x = base.x.clone()
        x[:, 7] += torch.randn(16)
        moved = (trunk(Tokens(x=x, pos=base.pos)).patches - trunk(base).patches).abs()
        assert bool(moved[:, :7].amax() > 1e-6) == earlier_moves
        assert moved[:, 7:].amax() > 1e-6


def test_mamba_r_recycles_its_registers_into_the_global_feature() -> None:
    trunk = tiny(num_registers=4)
    out = trunk(Tokens(x=torch.randn(2, 9, 16), pos=torch.zeros(1, 9, 16)))
    assert out.registers.shape == (2, 4, 16) and out.cls.shape == (2, 16)
    pieces = trunk.neck(out.registers).flatten(1)  # each register -> 16 / 4 features
    torch.testing.assert_close(out.cls, trunk.neck_norm(pieces))
    with pytest.raises(ConfigError, match="divisible"):
        tiny(num_registers=3)


def test_mamba_refuses_an_attention_mask() -> None:
    from fmcore.backbones.attention import AttentionMask

    with pytest.raises(ValueError, match="attn_mask"):
        tiny()(
            Tokens(x=torch.randn(1, 4, 16), pos=torch.zeros(1, 4, 16)), AttentionMask(causal=True)
        )


def test_pure_scan_gradient_passes_gradcheck_in_double_precision() -> None:
    inputs = [t.double().detach().requires_grad_() for t in scan_inputs(CHUNK + 3, seed=2)]
    inputs = [t[:1] if t.dim() == 3 else t for t in inputs]  # one sample keeps it quick
    inputs = [t.detach().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(selective_scan_torch, inputs, eps=1e-6, atol=1e-5)


def test_mae_trains_a_mamba_encoder_that_fmcore_eval_reloads(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fmcore(
        "train",
        "domain=digits",
        "method=mae",
        "encoder.trunk=mamba",
        "encoder.num_registers=2",
        "encoder.depth=2",
        "encoder.embed_dim=32",
        "method.decoder.embed_dim=32",
        "method.decoder.depth=1",
        "method.decoder.num_heads=2",
        "trainer.max_steps=3",
        "trainer.batch_size=8",
        "trainer.num_workers=0",
        "trainer.device=cpu",
        f"run.dir={run}",
        cwd=tmp_path,
    )
    fmcore(
        "eval",
        f"checkpoint={run}",
        "domain=digits",
        "eval=knn",
        "eval.bootstrap=0",
        "trainer.device=cpu",
        f"run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["checkpoint"] == str(run / "encoder.safetensors")
    assert report["feature_dim"] == 32
    assert report["metrics"]["accuracy"] > 0.2  # twice chance: features, not noise


@pytest.mark.parametrize(("size", "width"), [("mamba_tiny", 192), ("mamba_small", 384)])
def test_vim_sizes_have_the_papers_block_parameter_count(size: str, width: int) -> None:
    config = compose([f"encoder={size}"], config_sources(registry()))
    trunk = registry().trunk("mamba")(config.encoder)
    inner, rank, state, conv = 2 * width, math.ceil(width / 16), 16, 4
    # per direction: depthwise conv + bias, x_proj, dt_proj + bias, A_log, D
    direction = inner * (conv + 1) + inner * (rank + 2 * state) + (rank + 1) * inner
    direction += inner * state + inner
    block = width * 2 * inner + 2 * direction + inner * width + width  # in/out proj, RMSNorm
    assert sum(p.numel() for p in trunk.blocks.parameters()) == 24 * block
    # with the patch embedding (16 x 16 x 3 pixels, 197 positions) and the 1000-class head the
    # paper counts: Vim-Ti 7M, Vim-S 26M
    embedding, head = (16 * 16 * 3 + 1 + 197) * width, (width + 1) * 1000
    total = sum(p.numel() for p in trunk.parameters()) + embedding + head
    assert round(total / 1e6) == {"mamba_tiny": 7, "mamba_small": 26}[size]
