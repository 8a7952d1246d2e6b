"""The shared trunk: one pre-norm Vision Transformer family for every modality.

Module and parameter names follow timm's VisionTransformer (``blocks.0.attn.qkv.weight``,
``blocks.0.ls1.gamma``, ``norm.weight``, ``cls_token``, ``reg_token``) so 2D weights map to and
from timm's layout by renaming only the tokenizer's keys (see ``timm_layout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fmcore.backbones.attention import AttentionMask
from fmcore.backbones.trunk import DropPath, Trunk, TrunkOutput, TrunkSettings, block_indices
from fmcore.errors import ConfigError
from fmcore.modalities.base import Tokens

FFN_KINDS = ("mlp", "swiglu")


@dataclass(frozen=True, kw_only=True)
class ViTOptions:
    """``encoder.vit``: the ViT's own keys."""

    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layerscale: float | None = None  # initial LayerScale gamma; None disables LayerScale
    ffn: str = "mlp"  # "mlp" (GELU) or "swiglu" (DINOv2's ViT-g/14)

    def __post_init__(self) -> None:
        if self.ffn not in FFN_KINDS:
            raise ConfigError(f"encoder.vit.ffn={self.ffn} is not one of {', '.join(FFN_KINDS)}")

    def ffn_hidden(self, dim: int) -> int:
        """Hidden width of the feed-forward layer: ``dim * mlp_ratio``; for SwiGLU two thirds of
        it rounded up to a multiple of 8, as DINOv2 sizes it (4096 for ViT-g/14)."""
        hidden = int(dim * self.mlp_ratio)
        return hidden if self.ffn == "mlp" else (int(hidden * 2 / 3) + 7) // 8 * 8


@dataclass(frozen=True, kw_only=True)
class ViTConfig(ViTOptions, TrunkSettings):
    """Everything a ViT is built from: the shared trunk settings and the ViT's options."""

    def __post_init__(self) -> None:
        TrunkSettings.__post_init__(self)
        ViTOptions.__post_init__(self)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(
                f"embed_dim {dim} is not divisible by encoder.vit.num_heads {num_heads}"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(q.dtype)  # an additive mask in the autocast dtype
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
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


class SwiGLU(nn.Module):
    """SiLU-gated feed-forward with the gate and value in one packed ``fc1`` (first half gates),
    under timm's ``SwiGLUPacked`` names; DINOv2 calls the same weights ``w12`` and ``w3``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * value)


class Block(nn.Module):
    def __init__(self, config: ViTOptions, dim: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias)
        self.ls1 = _layerscale(dim, config.layerscale)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        ffn = Mlp if config.ffn == "mlp" else SwiGLU
        self.mlp = ffn(dim, config.ffn_hidden(dim))
        self.ls2 = _layerscale(dim, config.layerscale)
        self.drop_path2 = DropPath(drop_path)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask, is_causal)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _layerscale(dim: int, init_value: float | None) -> nn.Module:
    return nn.Identity() if init_value is None else LayerScale(dim, init_value)


class VisionTransformer(Trunk):
    """Pre-norm ViT over already-embedded tokens: [CLS, registers..., tokens...] -> blocks -> norm.

    The class token carries its own positional embedding ``cls_pos`` (timm's ``pos_embed[:, :1]``);
    register tokens carry none, as in DINOv2 with registers.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        self.depth = config.depth
        self.num_prefix_tokens = 1 + config.num_registers
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = (
            nn.Parameter(torch.zeros(1, config.num_registers, dim))
            if config.num_registers
            else None
        )
        self.blocks = nn.ModuleList(Block(config, dim, rate) for rate in config.drop_path_rates())
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        for parameter in (self.cls_pos, self.cls_token, self.reg_token):
            if parameter is not None:
                nn.init.trunc_normal_(parameter, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self,
        tokens: Tokens,
        attn_mask: AttentionMask | None = None,
        return_blocks: Sequence[int] = (),
    ) -> TrunkOutput:
        x = tokens.x + tokens.pos  # (B, N, D)
        batch, num_tokens, _ = x.shape
        prefix = [(self.cls_token + self.cls_pos).expand(batch, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(batch, -1, -1))
        x = torch.cat([*prefix, x], dim=1)  # (B, 1 + R + N, D)
        mask, is_causal = self._sdpa_mask(attn_mask, num_tokens, x.device)
        wanted = block_indices(return_blocks, self.depth)
        kept: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks):
            if self.config.activation_checkpointing and self.training:
                x = checkpoint(block, x, mask, is_causal, use_reentrant=False)
            else:
                x = block(x, mask, is_causal)
            if index in wanted:
                kept[index] = x
        x = self.norm(x)
        registers_end = self.num_prefix_tokens
        return TrunkOutput(
            cls=x[:, 0],
            registers=x[:, 1:registers_end],
            patches=x[:, registers_end:],
            intermediates=[kept[index] for index in wanted],
        )

    def _sdpa_mask(
        self, attn_mask: AttentionMask | None, num_tokens: int, device: torch.device
    ) -> tuple[Tensor | None, bool]:
        if attn_mask is None:
            return None, False
        if attn_mask.plain_causal:  # the prefix tokens come first: plain causal over them too
            return None, True
        return attn_mask.for_sdpa(self.num_prefix_tokens, num_tokens, device), False

    def forward_flops(self, num_tokens: int) -> int:
        n = num_tokens + self.num_prefix_tokens
        d = self.embed_dim
        hidden = self.config.ffn_hidden(d)
        ffn_matrices = 2 if self.config.ffn == "mlp" else 3  # SwiGLU: gate, value and output
        per_block = (
            2 * n * d * 3 * d
            + 2 * 2 * n * n * d
            + 2 * n * d * d
            + ffn_matrices * 2 * n * d * hidden
        )
        return per_block * self.depth
