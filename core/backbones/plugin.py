"""Registers the ViT trunk (entry point ``vit`` in fmcore's pyproject.toml)."""

from __future__ import annotations

from typing import Any

from fmcore import hookimpl
from fmcore.backbones.vit import VisionTransformer, ViTConfig


def build_vit(encoder: Any) -> VisionTransformer:
    """A ViT from the ``encoder`` config section."""
    return VisionTransformer(
        ViTConfig(
            embed_dim=int(encoder.embed_dim),
            depth=int(encoder.depth),
            num_heads=int(encoder.num_heads),
            mlp_ratio=float(encoder.mlp_ratio),
            qkv_bias=bool(encoder.qkv_bias),
            num_registers=int(encoder.num_registers),
            layerscale=None if encoder.layerscale is None else float(encoder.layerscale),
            drop_path=float(encoder.drop_path),
            drop_path_uniform=bool(encoder.drop_path_uniform),
            causal=bool(encoder.causal),
            activation_checkpointing=bool(encoder.activation_checkpointing),
        )
    )


@hookimpl
def fmcore_trunks() -> dict[str, Any]:
    return {"vit": build_vit}
