"""Mamba's selective scan, h_t = exp(dt_t A) h_(t-1) + dt_t B_t x_t and y_t = C_t h_t + D x_t,
and its short causal convolution: pure PyTorch everywhere, the ``mamba-ssm`` and
``causal-conv1d`` CUDA kernels where they are installed and the tensors are on a GPU.

The pure path is a chunked parallel scan: within a chunk of ``CHUNK`` tokens a Hillis-Steele
scan of the pairs (decay, input) takes log2(CHUNK) steps over the whole chunk at once; chunks
are chained by their carried state. Decays lie in (0, 1], so the products never overflow.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fmcore.config_sections import one_of
from fmcore.errors import ConfigError

CHUNK = 64  # tokens per parallel scan: memory of the backward pass grows with CHUNK x log2(CHUNK)
KERNELS = ("auto", "torch", "cuda")


def linear_recurrence(decay: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Every state of h_t = decay_t * h_(t-1) + inputs_t from h_(-1) = 0, along dim 1, and the
    running products of the decays: a Hillis-Steele inclusive scan in log2(L) steps. Not for
    autograd (it writes into its own copies); :class:`SelectiveScanFunction` differentiates."""
    decay, inputs = decay.clone(), inputs.clone()
    length = decay.shape[1]
    offset = 1
    while offset < length:
        inputs[:, offset:] += decay[:, offset:] * inputs[:, :-offset]  # the product is made first
        decay[:, offset:] = decay[:, offset:] * decay[:, :-offset]
        offset *= 2
    return inputs, decay


def scan_states(decay: Tensor, drive: Tensor) -> Tensor:
    """Every state of h_t = decay_t * h_(t-1) + drive_t along dim 1, chunk by chunk."""
    chunks, carried = [], None
    for start in range(0, decay.shape[1], CHUNK):
        states, decays = linear_recurrence(
            decay[:, start : start + CHUNK], drive[:, start : start + CHUNK]
        )
        if carried is not None:
            states = states + decays * carried.unsqueeze(1)
        carried = states[:, -1]
        chunks.append(states)
    return torch.cat(chunks, dim=1)


class SelectiveScanFunction(torch.autograd.Function):
    """The scan with its gradient written out. The (batch, L, channels, state) tensors (decays,
    inputs, states) are made again in the backward pass instead of being kept, so a layer holds
    only its inputs between the passes, as the CUDA kernel does."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor):
        ctx.save_for_backward(x, delta, A, B, C, D)
        decay = torch.exp(delta.unsqueeze(-1) * A)  # (batch, L, channels, state)
        states = scan_states(decay, (delta * x).unsqueeze(-1) * B.unsqueeze(2))
        return torch.einsum("blcs,bls->blc", states, C) + x * D

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor):
        x, delta, A, B, C, D = ctx.saved_tensors
        decay = torch.exp(delta.unsqueeze(-1) * A)
        states = scan_states(decay, (delta * x).unsqueeze(-1) * B.unsqueeze(2))
        # the adjoint runs backwards in time: G_t = dL/dh_t + decay_(t+1) * G_(t+1)
        grad_states = grad_y.unsqueeze(-1) * C.unsqueeze(2)
        next_decay = F.pad(decay[:, 1:], (0, 0, 0, 0, 0, 1))
        adjoint = scan_states(next_decay.flip(1), grad_states.flip(1)).flip(1)
        previous = F.pad(states[:, :-1], (0, 0, 0, 0, 1, 0))  # h_(t-1), zero before the start
        grad_exponent = adjoint * previous * decay  # through decay = exp(delta A)
        adjoint_b = torch.einsum("blcs,bls->blc", adjoint, B)
        grad_x = grad_y * D + adjoint_b * delta
        grad_delta = adjoint_b * x + torch.einsum("blcs,cs->blc", grad_exponent, A)
        grad_A = torch.einsum("blcs,blc->cs", grad_exponent, delta)
        grad_B = torch.einsum("blcs,blc->bls", adjoint, delta * x)
        grad_C = torch.einsum("blc,blcs->bls", grad_y, states)
        grad_D = (grad_y * x).sum(dim=(0, 1))
        return grad_x, grad_delta, grad_A, grad_B, grad_C, grad_D


def selective_scan_torch(
    x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor
) -> Tensor:
    """y (batch, L, channels) of the selective scan. x and delta (batch, L, channels), A
    (channels, state), B and C (batch, L, state), D (channels,). Runs in float32 (float64
    stays float64)."""
    dtype = x.dtype
    work = torch.promote_types(dtype, torch.float32)
    tensors = [t.to(work) for t in (x, delta, A, B, C, D)]
    with torch.autocast(device_type=x.device.type, enabled=False):  # einsum would drop to bf16
        return SelectiveScanFunction.apply(*tensors).to(dtype)


def causal_conv1d_torch(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Depthwise convolution of x (batch, channels, L) that sees no later token; weight
    (channels, 1, width)."""
    width = weight.shape[-1]
    return F.conv1d(x, weight, bias, padding=width - 1, groups=x.shape[1])[..., : x.shape[-1]]


@cache
def cuda_kernels() -> tuple[Any, Any] | None:
    """(selective_scan_fn, causal_conv1d_fn) from mamba-ssm and causal-conv1d, or None."""
    if not torch.cuda.is_available():
        return None
    if importlib.util.find_spec("mamba_ssm") is None:
        return None
    if importlib.util.find_spec("causal_conv1d") is None:
        return None
    from causal_conv1d import causal_conv1d_fn
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn, causal_conv1d_fn


def use_cuda_kernels(kernel: str, x: Tensor) -> bool:
    """Whether this call runs the CUDA kernels: ``auto`` where they are installed and x is on
    a GPU, ``cuda`` always (failing clearly without them), ``torch`` never."""
    one_of("encoder.mamba.kernel", kernel, KERNELS)
    if kernel == "torch":
        return False
    available = x.is_cuda and cuda_kernels() is not None
    if kernel == "cuda" and not available:
        raise ConfigError(
            "encoder.mamba.kernel=cuda needs a CUDA device and the mamba-ssm and causal-conv1d"
            " packages (the mamba extra); encoder.mamba.kernel=auto falls back to PyTorch"
        )
    return available


def selective_scan(
    x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, kernel: str = "auto"
) -> Tensor:
    """The selective scan (layouts as :func:`selective_scan_torch`) on the chosen kernel."""
    if not use_cuda_kernels(kernel, x):
        return selective_scan_torch(x, delta, A, B, C, D)
    scan, _ = cuda_kernels()  # type: ignore[misc]
    dtype = x.dtype  # the kernel wants delta, B and C in x's dtype (autocast runs softplus in fp32)
    y = scan(
        x.transpose(1, 2).contiguous(),
        delta.to(dtype).transpose(1, 2).contiguous(),
        A,
        B.to(dtype).transpose(1, 2).contiguous(),
        C.to(dtype).transpose(1, 2).contiguous(),
        D.float(),
    )
    return y.transpose(1, 2)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: str = "auto") -> Tensor:
    """:func:`causal_conv1d_torch` on the chosen kernel."""
    if not use_cuda_kernels(kernel, x):
        return causal_conv1d_torch(x, weight, bias)
    _, conv = cuda_kernels()  # type: ignore[misc]
    return conv(x.contiguous(), weight.squeeze(1), bias)
