"""DINOv2's optimizer groups: layer-wise lr decay, a smaller lr for the patch embedding, and no
weight decay on biases, norms, LayerScale and tokens."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from torch import nn

from fmcore.method import takes_weight_decay

BLOCK = re.compile(r"(?:^|\.)trunk\.blocks\.(\d+)\.")
EMBEDDING_PARTS = (
    ".tokenizer.",
    ".trunk.cls_token",
    ".trunk.cls_pos",
    ".trunk.reg_token",
    ".mask_token",
)


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings and prefix tokens, i + 1 for block i, depth + 1 for the rest."""
    match = BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(part in f".{name}" for part in EMBEDDING_PARTS):
        return 0
    return depth + 1


def layerwise_groups(
    module: nn.Module, depth: int, layer_decay: float, patch_embed_lr: float
) -> list[dict[str, Any]]:
    """Groups of parameters sharing (lr_scale, weight_decay_scale)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        lr_scale = layer_decay ** (depth + 1 - layer_id(name, depth))
        if ".tokenizer." in f".{name}" and not name.endswith("pos_embed"):
            lr_scale *= patch_embed_lr  # DINOv2's patch_embed_lr_mult
        decay = 1.0 if takes_weight_decay(name, parameter) else 0.0
        groups[(lr_scale, decay)].append(parameter)
    return [
        {"params": params, "lr_scale": lr_scale, "weight_decay_scale": decay}
        for (lr_scale, decay), params in groups.items()
    ]
