"""Collapse signals: the numbers that show a self-supervised objective failing before its
evaluation does, and the engine's one-time warning when one crosses its line.

Every method logs ``collapse/feature_std`` (:func:`feature_spread`); each adds its own signals
(DINO's teacher entropy, SimCLR's positive and negative similarity, MAE's loss against a
mean predictor) under the same ``collapse/`` prefix, and says when they mean trouble in
``Method.collapse_warnings``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

PREFIX = "collapse/"  # metrics.jsonl keys of collapse signals; fmcore report draws them together
FEATURE_STD = PREFIX + "feature_std"
FEATURE_STD_WARNING = 0.05  # of about 1 for features spread over the sphere


@torch.no_grad()
def feature_spread(features: Tensor) -> float:
    """Standard deviation across the batch of the L2-normalised features (B, D), averaged over
    dimensions and scaled by sqrt(D): about 1 for features spread evenly over the sphere, 0 when
    every sample maps to the same vector (the collapse measure of SimSiam, Chen & He 2021)."""
    normalized = F.normalize(features.detach().float(), dim=1)
    return float(normalized.std(dim=0).mean() * math.sqrt(features.shape[1]))


def spread_warning(metrics: Mapping[str, float]) -> dict[str, str]:
    """The warning every method shares: features of different samples becoming one."""
    spread = metrics.get(FEATURE_STD)
    if spread is None or spread >= FEATURE_STD_WARNING:
        return {}
    return {
        FEATURE_STD: f"features are collapsing: {FEATURE_STD} {spread:.3f} across the batch"
        f" (about 1 when spread, 0 when every sample gets the same features)"
    }


class CollapseWatch:
    """Prints each kind of collapse warning once per run, on the terminal (stderr)."""

    def __init__(self) -> None:
        self.warned: set[str] = set()

    def check(self, step: int, warnings: Mapping[str, str]) -> None:
        for key, message in warnings.items():
            if key not in self.warned:
                self.warned.add(key)
                print(f"warning: step {step}: {message}", file=sys.stderr, flush=True)
