"""Registers fmcore's trunks, the ViT and Mamba (entry point ``trunks`` in pyproject.toml)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from omegaconf import DictConfig

from fmcore import hookimpl
from fmcore.backbones.mamba import Mamba, MambaConfig, MambaOptions
from fmcore.backbones.trunk import trunk_options, trunk_settings
from fmcore.backbones.vit import VisionTransformer, ViTConfig, ViTOptions


def build_vit(encoder: DictConfig) -> VisionTransformer:
    """A ViT from the ``encoder`` config section: its shared keys and ``encoder.vit``."""
    shared = asdict(trunk_settings(encoder))
    return VisionTransformer(
        ViTConfig(**shared, **asdict(trunk_options(encoder, "vit", ViTOptions)))
    )


def build_mamba(encoder: DictConfig) -> Mamba:
    """Vim, or Mamba-R with ``encoder.num_registers``: the shared keys and ``encoder.mamba``."""
    shared = asdict(trunk_settings(encoder))
    options = asdict(trunk_options(encoder, "mamba", MambaOptions))
    return Mamba(MambaConfig(**shared, **options))


@hookimpl
def fmcore_trunks() -> dict[str, Any]:
    return {"vit": build_vit, "mamba": build_mamba}
