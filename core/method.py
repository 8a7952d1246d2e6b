"""The method contract: a self-supervised objective over the encoder's token interface.

A method is an ``nn.Module`` holding the encoder and everything else it trains or tracks (heads,
EMA teacher, decoder, centres), so one ``state_dict`` checkpoints it all. The engine calls
``forward(batch, ctx)`` once per micro-batch, back-propagates the returned loss, steps the
optimizer (clipping each of ``clip_groups()``, then calling ``before_optimizer_step(ctx)``), then
calls ``after_optimizer_step(ctx)`` (EMA updates and the like).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from fmcore.collapse import spread_warning
from fmcore.encoder import Encoder
from fmcore.errors import ConfigError
from fmcore.modalities.base import Modality
from fmcore.view_maker import ViewMaker


class Scope(StrEnum):
    """Who a parameter is aggregated with in federated training."""

    SHARED = "shared"  # every site (the trunk)
    DOMAIN = "domain"  # sites of the same domain (tokenizer, domain heads)
    LOCAL = "local"  # never leaves the site


@dataclass
class Batch:
    """A collated batch: data (B, ...) on the device as the workers handed it over (integers,
    uint8/uint16, except for domains with ``float_samples``: ``Domain.to_unit`` makes the
    [0, 1] floats, ``Domain.encoder_input`` also normalises; ``ctx.views`` does both), labels
    (B,) (-1 unknown), per-sample meta, and the samples' valid-pixel masks (B, 1, *S) uint8
    when the domain gives them (``Sample.valid``), else None."""

    data: Tensor
    labels: Tensor
    meta: list[dict[str, Any]] = field(default_factory=list)
    valid: Tensor | None = None

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        valid = None if self.valid is None else self.valid.pin_memory()
        return Batch(self.data.pin_memory(), self.labels.pin_memory(), self.meta, valid)

    def to(self, device: torch.device) -> Batch:
        non_blocking = device.type == "cuda"
        return Batch(
            self.data.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.meta,
            None if self.valid is None else self.valid.to(device, non_blocking=non_blocking),
        )

    def __len__(self) -> int:
        return self.data.shape[0]


@dataclass
class StepContext:
    """What a method may read at one training step."""

    step: int
    max_steps: int
    lr: float
    weight_decay: float
    ema_momentum: float
    views: ViewMaker
    generator: torch.Generator  # device generator for masks and other per-step randomness

    @property
    def progress(self) -> float:
        return self.step / max(1, self.max_steps)


@dataclass
class StepOutput:
    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


NO_DECAY_SUFFIXES = (
    "bias",
    "cls_token",
    "reg_token",
    "mask_token",
    "pos_embed",
    "cls_pos",
    "gamma",
    "A_log",  # a selective scan's state matrix (Mamba keeps it out of weight decay)
)


def as_teacher(encoder: Encoder) -> Encoder:
    """``encoder`` made a teacher, in place: no gradients, no stochastic depth."""
    encoder.requires_grad_(False)
    encoder.trunk.disable_stochastic_depth()
    return encoder


@torch.no_grad()
def layer_normed_tokens(teacher: Encoder, view: Tensor) -> Tensor:
    """The teacher's patch tokens (B, N, D) of the whole view, each layer-normed without
    affine parameters (I-JEPA's targets)."""
    patches = teacher(view).patches
    return F.layer_norm(patches, patches.shape[-1:])


@torch.no_grad()
def ema_update(pairs: Sequence[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for each (teacher, student)
    pair of modules with the same parameters (an EMA teacher's update after a step)."""
    teacher_params = [p for teacher, _ in pairs for p in teacher.parameters()]
    student_params = [p for _, student in pairs for p in student.parameters()]
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1 - momentum)


def takes_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    """Weight decay applies to weight matrices only: not to biases, norms, tokens, positions."""
    return parameter.ndim > 1 and not name.endswith(NO_DECAY_SUFFIXES)


class Method(nn.Module, ABC):
    """Base class of every method plugin; ``name`` is selected by ``method=<name>``."""

    name: ClassVar[str]

    def __init__(self, config: DictConfig, encoder: Encoder, modality: Modality) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.modality = modality
        self.view_specs = {
            name: modality.view_spec.from_config(dict(spec))
            for name, spec in (config.get("views") or {}).items()
        }

    @abstractmethod
    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        """Loss of one micro-batch. Ask ``ctx.views`` for augmented views of ``batch.data``."""

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Called after backward and clipping, before the optimizer step (e.g. to drop grads)."""

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Called after every optimizer step (e.g. the EMA teacher update)."""

    def collapse_warnings(self, metrics: Mapping[str, float], progress: float) -> dict[str, str]:
        """Warnings (signal name -> message) that the logged ``metrics`` show the objective
        collapsing, at ``progress`` (0-1) of training; the engine prints each kind once.

        The base class checks ``feature_std``; methods add the signals of their own losses.
        """
        return spread_warning(metrics)

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter sets whose gradient norms are clipped separately (one set by default)."""
        return [[p for p in self.parameters() if p.requires_grad]]

    def attach_teacher(self, teacher: Encoder) -> None:
        """Take a frozen encoder read from ``method.teacher`` (a target model on disk, as
        D-iGPT distils); a method without such a teacher refuses it."""
        raise ConfigError(f"method={self.name} takes no teacher file (method.teacher)")

    def export_encoder(self) -> Encoder:
        """The encoder users keep (DINO-style methods return the teacher's)."""
        return self.encoder

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: no weight decay on biases, norms, tokens and positional embeddings.

        Each group has ``params`` and ``weight_decay_scale`` (multiplied by the scheduled decay),
        and may have ``lr_scale`` (multiplied by the scheduled learning rate; default 1).
        """
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            (decay if takes_weight_decay(name, parameter) else no_decay).append(parameter)
        return [
            {"params": decay, "weight_decay_scale": 1.0},
            {"params": no_decay, "weight_decay_scale": 0.0},
        ]

    def scopes(self) -> dict[str, Scope]:
        """Federated scope of every state-dict entry: trunks are shared, the rest is per domain.

        Methods override this to keep private parts ``local``.
        """
        return {
            key: Scope.SHARED if ".trunk." in f".{key}" else Scope.DOMAIN
            for key in self.state_dict()
        }
