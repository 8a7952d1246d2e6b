"""The logged gradient norm: with clipping, the largest clip group's norm before clipping; with
trainer.clip_grad null, the same norm, and the gradients untouched."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fmcore.engine.optimizer import clip_gradients


class TwoGroups(nn.Module):
    """Stands in for a method: two parameter sets clipped separately (as DINOv2's heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(2))
        self.b = nn.Parameter(torch.zeros(3))
        self.unused = nn.Parameter(torch.zeros(1))  # no gradient this step

    def clip_groups(self) -> list[list[nn.Parameter]]:
        return [[self.a, self.unused], [self.b]]


def with_gradients() -> TwoGroups:
    module = TwoGroups()
    module.a.grad = torch.tensor([3.0, 4.0])  # norm 5
    module.b.grad = torch.tensor([1.0, 2.0, 2.0])  # norm 3
    return module


def test_without_clipping_the_norm_is_logged_and_gradients_are_untouched() -> None:
    module = with_gradients()
    assert clip_gradients(module, None) == pytest.approx(5.0)
    assert module.a.grad.tolist() == [3.0, 4.0]
    assert module.b.grad.tolist() == [1.0, 2.0, 2.0]


def test_clipping_scales_each_group_to_the_limit_and_logs_the_norm_before() -> None:
    module = with_gradients()
    assert clip_gradients(module, 4.0) == pytest.approx(5.0)
    assert math.hypot(*module.a.grad.tolist()) == pytest.approx(4.0, rel=1e-5)
    assert module.b.grad.tolist() == pytest.approx([1.0, 2.0, 2.0])  # norm 3 is under 4
