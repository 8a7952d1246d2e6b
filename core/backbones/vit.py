"""The shared trunk: one pre-norm Vision Transformer family for every modality.

Module and parameter names follow timm's VisionTransformer (``blocks.0.attn.qkv.weight``,
``blocks.0.ls1.gamma``, ``norm.weight``, ``cls_token``, ``reg_token``) so 2D weights map to and
from timm's layout by renaming only the tokenizer's keys (see ``timm_layout``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fmcore.errors import ConfigError
from fmcore.modalities.base import Tokens


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_registers: int = 0
    layerscale: float | None = None  # initial LayerScale gamma; None disables LayerScale
    drop_path: float = 0.0  # stochastic depth rate of the last block (linear from 0)
    drop_path_uniform: bool = False  # every block at ``drop_path`` instead (DINOv2's choice)
    causal: bool = False  # causal self-attention for autoregressive methods
    activation_checkpointing: bool = False


@dataclass
class TrunkOutput:
    """Final-normed outputs. cls (B, D); registers (B, R, D); patches (B, N, D)."""

    cls: Tensor
    registers: Tensor
    patches: Tensor


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample, rescaling the survivors."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, causal: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)  # (B, N, D)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: ViTConfig, drop_path: float) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias, config.causal)
        self.ls1 = _layerscale(dim, config.layerscale)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))
        self.ls2 = _layerscale(dim, config.layerscale)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _layerscale(dim: int, init_value: float | None) -> nn.Module:
    return nn.Identity() if init_value is None else LayerScale(dim, init_value)


class VisionTransformer(nn.Module):
    """Pre-norm ViT over already-embedded tokens: [CLS, registers..., tokens...] -> blocks -> norm.

    The class token carries its own positional embedding ``cls_pos`` (timm's ``pos_embed[:, :1]``);
    register tokens carry none, as in DINOv2 with registers.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = (
            nn.Parameter(torch.zeros(1, config.num_registers, dim))
            if config.num_registers
            else None
        )
        rates = (
            [config.drop_path] * config.depth
            if config.drop_path_uniform
            else torch.linspace(0, config.drop_path, config.depth).tolist()
        )
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._init_weights()

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.config.num_registers

    def _init_weights(self) -> None:
        for parameter in (self.cls_pos, self.cls_token, self.reg_token):
            if parameter is not None:
                nn.init.trunc_normal_(parameter, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, tokens: Tokens) -> TrunkOutput:
        x = tokens.x + tokens.pos  # (B, N, D)
        batch = x.shape[0]
        prefix = [(self.cls_token + self.cls_pos).expand(batch, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(batch, -1, -1))
        x = torch.cat([*prefix, x], dim=1)  # (B, 1 + R + N, D)
        for block in self.blocks:
            if self.config.activation_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.norm(x)
        registers_end = self.num_prefix_tokens
        return TrunkOutput(
            cls=x[:, 0], registers=x[:, 1:registers_end], patches=x[:, registers_end:]
        )

    def forward_flops(self, num_tokens: int) -> int:
        """Multiply-add FLOPs (x2) of one forward pass over ``num_tokens`` tokens (+ prefix)."""
        n = num_tokens + self.num_prefix_tokens
        d = self.embed_dim
        hidden = int(d * self.config.mlp_ratio)
        per_block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * hidden
        return per_block * self.config.depth
