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
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

PREFIX = "collapse/"  # metrics.jsonl keys of collapse signals; fmcore report draws them together
FEATURE_STD = PREFIX + "feature_std"
FEATURE_STD_WARNING = 0.05  # of about 1 for features spread over the sphere
# Reconstruction objectives (MAE, AIM): their loss over that of always predicting the mean target;
# below 1 the prediction uses what the encoder saw.
LOSS_VS_MEAN = PREFIX + "loss_vs_mean_predictor"
MEAN_PREDICTOR_AFTER = 0.2  # share of training after which the loss must beat the mean


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


@torch.no_grad()
def loss_vs_mean_predictor(
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    loss: Tensor,
    target: Tensor,
    scored: Tensor,
) -> float:
    """``loss`` over the loss of a constant prediction, the mean of the scored targets, under the
    same ``loss_fn(pred, target, scored)``: target (B, N, P), scored (B, N) bool; 1.0 (no
    evidence either way) when nothing is scored."""
    if not bool(scored.any()):
        return 1.0
    mean_target = target[scored].float().mean(dim=0).expand_as(target)
    baseline = loss_fn(mean_target, target, scored)
    return float(loss.detach() / baseline.clamp(min=1e-12))


def mean_predictor_warning(
    metrics: Mapping[str, float], progress: float, remedy: str
) -> dict[str, str]:
    """The warning of a reconstruction objective whose prediction ignores the encoder."""
    ratio = metrics.get(LOSS_VS_MEAN)
    if ratio is None or progress < MEAN_PREDICTOR_AFTER or ratio < 1.0:
        return {}
    return {
        LOSS_VS_MEAN: f"the reconstruction is no better than predicting the mean target"
        f" ({LOSS_VS_MEAN} {ratio:.3f}): the prediction ignores the encoder; {remedy}"
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
