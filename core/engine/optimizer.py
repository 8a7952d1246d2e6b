"""The optimizer a method trains with: AdamW over the method's parameter groups, and clipping."""

from __future__ import annotations

import torch

from fmcore.config_sections import TrainerSection
from fmcore.engine.schedules import StepSchedules
from fmcore.method import Method


def make_optimizer(
    method: Method, trainer: TrainerSection, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA) over ``method.parameter_groups()``; lr and decay are set per step."""
    beta1, beta2 = trainer.betas
    return torch.optim.AdamW(
        method.parameter_groups(),
        lr=trainer.lr,
        betas=(beta1, beta2),
        fused=device.type == "cuda",
    )


def apply_schedules(optimizer: torch.optim.Optimizer, schedules: StepSchedules) -> None:
    """Set every group's lr and weight decay, scaled by the group's own factors."""
    for group in optimizer.param_groups:
        group["lr"] = schedules.lr * group.get("lr_scale", 1.0)
        group["weight_decay"] = schedules.weight_decay * group["weight_decay_scale"]


def clip_gradients(method: Method, max_norm: float | None) -> float:
    """Clip each of the method's clip groups to ``max_norm`` (None: no clipping); the largest
    group norm before clipping, logged either way."""
    groups = method.clip_groups()
    if max_norm is None:
        grads = [[p.grad for p in group if p.grad is not None] for group in groups]
        norms = [torch.nn.utils.get_total_norm(g) for g in grads if g]
    else:
        norms = [torch.nn.utils.clip_grad_norm_(group, max_norm) for group in groups]
    return float(torch.stack(norms).max()) if norms else 0.0
