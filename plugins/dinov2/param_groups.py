"""DINOv2's optimizer groups: layer-wise lr decay, a smaller lr for the patch embedding, and no
weight decay on biases, norms, LayerScale and tokens."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from torch import nn

from fmcore.backbones.trunk import Trunk
from fmcore.method import takes_weight_decay

EMBEDDING_PARTS = (".tokenizer.", ".mask_token")


def layer_id(name: str, trunk: Trunk) -> int:
    """0 for embeddings and prefix tokens, i + 1 for the trunk's block i, depth + 1 for the rest
    (the final norm, the heads)."""
    _, in_trunk, trunk_name = f".{name}".partition(".trunk.")
    if in_trunk:
        return trunk.layer_id(trunk_name)
    if any(part in f".{name}" for part in EMBEDDING_PARTS):
        return 0
    return trunk.depth + 1


def layerwise_groups(
    module: nn.Module, trunk: Trunk, layer_decay: float, patch_embed_lr: float
) -> list[dict[str, Any]]:
    """Groups of parameters sharing (lr_scale, weight_decay_scale); layers are ``trunk``'s."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        lr_scale = layer_decay ** (trunk.depth + 1 - layer_id(name, trunk))
        if ".tokenizer." in f".{name}" and not name.endswith("pos_embed"):
            lr_scale *= patch_embed_lr  # DINOv2's patch_embed_lr_mult
        decay = 1.0 if takes_weight_decay(name, parameter) else 0.0
        groups[(lr_scale, decay)].append(parameter)
    return [
        {"params": params, "lr_scale": lr_scale, "weight_decay_scale": decay}
        for (lr_scale, decay), params in groups.items()
    ]
