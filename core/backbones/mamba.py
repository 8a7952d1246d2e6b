"""Vision Mamba trunks: Vim (bidirectional selective-state-space blocks, a class token in the
middle of the sequence) and, with ``encoder.num_registers``, Mamba-R (registers spread evenly
through the sequence and recycled into the global feature).

Mixer as state-spaces/mamba's Mamba-1 (``mamba_simple.Mamba``: in/out projections without
bias, a depthwise causal convolution of width 4, S4D-real A, inverse-softplus dt bias); the
backward scan as Vim's bimamba v2 (its own convolution, projections, A and D; the two
directions averaged). Blocks are pre-norm residual with RMSNorm. A Mamba mixes tokens in their
sequence order: image tokens come in raster order, and MAE's kept tokens keep theirs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fmcore.backbones.attention import AttentionMask
from fmcore.backbones.selective_scan import KERNELS, causal_conv1d, selective_scan
from fmcore.backbones.trunk import DropPath, Trunk, TrunkOutput, TrunkSettings, block_indices
from fmcore.config_sections import at_least, one_of
from fmcore.errors import ConfigError
from fmcore.modalities.base import Tokens


@dataclass(frozen=True, kw_only=True)
class MambaOptions:
    """``encoder.mamba``: Mamba-1's defaults (state-spaces/mamba) and Vim's scan directions."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(embed_dim / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    bidirectional: bool = True  # Vim: a second scan over the reversed sequence, averaged
    kernel: str = "auto"  # auto: CUDA kernels where installed and on a GPU; torch; cuda

    def __post_init__(self) -> None:
        at_least("encoder.mamba.d_state", self.d_state, 1)
        at_least("encoder.mamba.expand", self.expand, 1)
        if self.dt_rank is not None:
            at_least("encoder.mamba.dt_rank", self.dt_rank, 1)
        if not 2 <= self.d_conv <= 4:  # the widths the causal-conv1d kernel takes
            raise ConfigError(f"encoder.mamba.d_conv must be 2, 3 or 4, not {self.d_conv}")
        one_of("encoder.mamba.kernel", self.kernel, KERNELS)
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError("encoder.mamba needs 0 < dt_min <= dt_max")

    def rank_for(self, dim: int) -> int:
        """The rank of dt's projection for a trunk of width ``dim``."""
        return self.dt_rank or math.ceil(dim / 16)


@dataclass(frozen=True, kw_only=True)
class MambaConfig(MambaOptions, TrunkSettings):
    """Everything a Mamba trunk is built from: the shared trunk settings and its options."""

    def __post_init__(self) -> None:
        TrunkSettings.__post_init__(self)
        MambaOptions.__post_init__(self)


class SelectiveScan(nn.Module):
    """One scan direction: causal convolution, SiLU, input-dependent (dt, B, C), the scan."""

    def __init__(self, inner: int, dt_rank: int, options: MambaOptions) -> None:
        super().__init__()
        self.dt_rank, self.d_state, self.kernel = dt_rank, options.d_state, options.kernel
        self.conv1d = nn.Conv1d(inner, inner, options.d_conv, groups=inner, bias=True)
        self.x_proj = nn.Linear(inner, dt_rank + 2 * options.d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner, bias=True)
        states = torch.arange(1, options.d_state + 1, dtype=torch.float32)
        self.A_log = nn.Parameter(states.log().repeat(inner, 1))  # A = -[1, 2, ..., d_state]
        self.D = nn.Parameter(torch.ones(inner))
        self.options = options
        self.reset_dt()

    @torch.no_grad()
    def reset_dt(self) -> None:
        """dt starts log-uniform in [dt_min, dt_max]: the bias is softplus^-1 of such a draw."""
        options = self.options
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        low, high = math.log(options.dt_min), math.log(options.dt_max)
        dt = torch.exp(torch.rand(self.dt_proj.out_features) * (high - low) + low)
        dt = dt.clamp(min=options.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, inner) -> y (B, L, inner)."""
        conv = causal_conv1d(x.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, self.kernel)
        x = F.silu(conv.transpose(1, 2))
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        A = -torch.exp(self.A_log.float())
        return selective_scan(x, delta, A, B, C, self.D, self.kernel)


class MambaMixer(nn.Module):
    def __init__(self, dim: int, options: MambaOptions) -> None:
        super().__init__()
        inner = options.expand * dim
        dt_rank = options.rank_for(dim)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.scan = SelectiveScan(inner, dt_rank, options)
        self.scan_backward = (
            SelectiveScan(inner, dt_rank, options) if options.bidirectional else None
        )
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.in_proj(x).chunk(2, dim=-1)
        y = self.scan(x)
        if self.scan_backward is not None:
            y = (y + self.scan_backward(x.flip(1)).flip(1)) / 2
        return self.out_proj(y * F.silu(gate))


class MambaBlock(nn.Module):
    def __init__(self, dim: int, options: MambaOptions, drop_path: float) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self.mixer = MambaMixer(dim, options)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.mixer(self.norm(x)))


class Mamba(Trunk):
    """Vim, or Mamba-R with registers.

    Without registers a class token sits in the middle of the sequence (Vim's
    ``use_middle_cls_token``) and is the global feature. With R registers (Mamba-R) there is no
    class token: after every N // (R + 1) patch tokens one register is inserted, and the global
    feature recycles all of them: each is projected to embed_dim / R and the R pieces are joined
    and normed (Mamba-R's neck, with the reduction that keeps the trunk's width).
    """

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim, self.depth = config.embed_dim, config.depth
        dim, registers = config.embed_dim, config.num_registers
        self.num_prefix_tokens = registers or 1
        if registers:
            if dim % registers:
                raise ConfigError(
                    f"encoder.embed_dim {dim} is not divisible by encoder.num_registers"
                    f" {registers}: Mamba-R recycles each register into embed_dim / registers"
                    " features"
                )
            self.reg_token = nn.Parameter(torch.zeros(1, registers, dim))
            self.neck = nn.Linear(dim, dim // registers, bias=False)
            self.neck_norm = nn.RMSNorm(dim, eps=1e-5)
        else:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            MambaBlock(dim, config, rate) for rate in config.drop_path_rates()
        )
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        # Truncated normal (0.02) linears and tokens, as the ViT here (Vim and Mamba-R keep
        # PyTorch's default for in_proj and x_proj); Mamba's dt initialisation, and its out_proj
        # scaled by 1 / sqrt(depth)
        nn.init.trunc_normal_(self._prefix_parameter(), std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
        for module in self.modules():  # after the loop above, which covers dt_proj too
            if isinstance(module, SelectiveScan):
                module.reset_dt()
        for block in self.blocks:
            out_proj = block.mixer.out_proj.weight
            nn.init.kaiming_uniform_(out_proj, a=math.sqrt(5))
            with torch.no_grad():
                out_proj /= math.sqrt(self.depth)

    def _prefix_parameter(self) -> nn.Parameter:
        return self.reg_token if self.config.num_registers else self.cls_token

    def forward(
        self,
        tokens: Tokens,
        attn_mask: AttentionMask | None = None,
        return_blocks: Sequence[int] = (),
    ) -> TrunkOutput:
        if attn_mask is not None:
            raise ValueError(
                "the mamba trunk mixes tokens by a scan in sequence order, not by attention: it"
                " takes no attn_mask"
            )
        x = tokens.x + tokens.pos  # (B, N, D)
        batch, num_tokens, _ = x.shape
        prefix = self._prefix_parameter().expand(batch, -1, -1)
        order, inverse = sequence_order(num_tokens, self.config.num_registers, x.device)
        x = torch.cat([prefix, x], dim=1)[:, order]  # in sequence order
        wanted = block_indices(return_blocks, self.depth)
        kept: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks):
            if self.config.activation_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if index in wanted:
                kept[index] = x
        x = self.norm(x)[:, inverse]  # prefix tokens first, then the patches in input order
        prefix_out, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        if self.config.num_registers:
            cls = self.neck_norm(self.neck(prefix_out).flatten(1))
            registers = prefix_out
        else:
            cls, registers = prefix_out[:, 0], prefix_out[:, 1:]
        return TrunkOutput(
            cls=cls,
            registers=registers,
            patches=patches,
            intermediates=[kept[index][:, inverse] for index in wanted],
        )

    def forward_flops(self, num_tokens: int) -> int:
        """Matmuls, the causal convolution and the scan's multiply-adds (x2)."""
        options = self.config
        length, dim = num_tokens + self.num_prefix_tokens, self.embed_dim
        inner = options.expand * dim
        rank = options.rank_for(dim)
        state = options.d_state
        directions = 2 if options.bidirectional else 1
        per_direction = inner * (options.d_conv + rank + 2 * state + rank + 3 * state)
        per_token = dim * 2 * inner + directions * per_direction + inner * dim
        return 2 * length * per_token * self.depth


@cache
def sequence_order(
    num_tokens: int, num_registers: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """(order, inverse) for the tokens [prefix..., patches...]: ``order[i]`` is the token at
    sequence position i, ``inverse`` puts a sequence back into [prefix..., patches...]. Kept per
    device, so a forward pass copies no index to the GPU.

    No registers: the class token at position N // 2 (Vim). R registers: one after every
    N // (R + 1) patch tokens, the remaining patches at the end (Mamba-R's ``get_cls_idx``)."""
    prefix = num_registers or 1
    if num_registers:
        every = num_tokens // (num_registers + 1)
        positions = [every * (i + 1) + i for i in range(num_registers)]
    else:
        positions = [num_tokens // 2]
    place = {position: index for index, position in enumerate(positions)}
    patches = iter(range(prefix, prefix + num_tokens))
    order = [place[i] if i in place else next(patches) for i in range(prefix + num_tokens)]
    order_tensor = torch.tensor(order, device=device)
    return order_tensor, order_tensor.argsort()
