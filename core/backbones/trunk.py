"""The trunk contract every backbone meets: the ViT now, causal and state-space trunks next.

A trunk turns a modality's :class:`~fmcore.modalities.base.Tokens` into final-normed tokens.
Everything outside the trunk (the encoder, methods, the engine, evaluation, federation) reads
it through this class only: its width and depth, how many prefix tokens (class token,
registers, a pooling token) it adds, its blocks (layer-wise lr decay, intermediate features),
turning stochastic depth off (an EMA teacher), and its FLOPs.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from fmcore.backbones.attention import AttentionMask
from fmcore.config_sections import at_least, structured
from fmcore.errors import ConfigError
from fmcore.modalities.base import Tokens

Options = TypeVar("Options")


@dataclass
class TrunkOutput:
    """Final-normed outputs. cls (B, D) the global feature (a class or pooling token, or what
    the trunk makes of its registers); registers (B, R, D); patches (B, N, D), one per input
    token and in its order;
    intermediates: the outputs of the blocks asked for (each (B, P + N, D), unnormed, prefix
    tokens first)."""

    cls: Tensor
    registers: Tensor
    patches: Tensor
    intermediates: list[Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class TrunkSettings:
    """The ``encoder`` keys every trunk reads; a trunk's own keys sit in ``encoder.<trunk>``."""

    embed_dim: int
    depth: int
    num_registers: int = 0
    drop_path: float = 0.0  # stochastic depth rate of the last block (linear from 0)
    drop_path_uniform: bool = False  # every block at ``drop_path`` instead (DINOv2's choice)
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        at_least("encoder.embed_dim", self.embed_dim, 1)
        at_least("encoder.depth", self.depth, 1)
        at_least("encoder.num_registers", self.num_registers, 0)
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"encoder.drop_path must be in [0, 1), not {self.drop_path}")

    def drop_path_rates(self) -> list[float]:
        """Each block's stochastic depth rate: linear from 0 at the first block to
        ``drop_path`` at the last, or ``drop_path`` everywhere."""
        if self.drop_path_uniform:
            return [self.drop_path] * self.depth
        last = max(self.depth - 1, 1)
        return [self.drop_path * i / last for i in range(self.depth)]


def trunk_settings(encoder: DictConfig) -> TrunkSettings:
    """The shared keys of an ``encoder`` config section, typed (its other keys left aside)."""
    shared = [key for key in encoder if key in TrunkSettings.__dataclass_fields__]
    return structured(OmegaConf.masked_copy(encoder, shared), TrunkSettings, "encoder")


def trunk_options(encoder: DictConfig, trunk: str, schema: type[Options]) -> Options:
    """``encoder.<trunk>`` typed by the trunk's own schema (a key it lacks fails, named)."""
    values = encoder.get(trunk)
    return structured(
        values if values is not None else OmegaConf.create(), schema, f"encoder.{trunk}"
    )


BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.")


class Trunk(nn.Module, ABC):
    """A stack of ``depth`` blocks of width ``embed_dim`` over tokens.

    Subclasses set ``embed_dim``, ``depth``, ``num_prefix_tokens`` and ``blocks`` (an
    ``nn.ModuleList`` whose parameters are named ``blocks.<i>.``), and implement ``forward``
    and ``forward_flops``. Prefix tokens (class or pooling token, registers) carry no input
    position; their parameters, with everything that embeds tokens, sit at layer 0.
    """

    embed_dim: int
    depth: int
    num_prefix_tokens: int
    blocks: nn.ModuleList

    @abstractmethod
    def forward(
        self,
        tokens: Tokens,
        attn_mask: AttentionMask | None = None,
        return_blocks: Sequence[int] = (),
    ) -> TrunkOutput:
        """All tokens after the last block and the final norm. ``attn_mask`` shapes which patch
        tokens see which (None: all see all); ``return_blocks`` names blocks whose outputs come
        back in ``TrunkOutput.intermediates``."""

    @abstractmethod
    def forward_flops(self, num_tokens: int) -> int:
        """FLOPs (2 per multiply-add) of one forward pass over ``num_tokens`` input tokens."""

    def layer_id(self, name: str) -> int:
        """Layer of the trunk parameter ``name`` (as ``named_parameters`` gives it): 0 for
        embeddings and prefix tokens, i + 1 for block i, depth + 1 for what follows the blocks
        (the final norm). Layer-wise lr decay scales each layer's lr by its distance from the top.
        """
        match = BLOCK_NAME.match(name)
        if match:
            return int(match.group(1)) + 1
        if "." not in name:  # a bare parameter of the trunk: a prefix token or its position
            return 0
        return self.depth + 1

    def disable_stochastic_depth(self) -> None:
        """Never drop a residual branch (an EMA teacher, evaluation with train-mode modules)."""
        for module in self.modules():
            if isinstance(module, DropPath):
                module.rate = 0.0


def block_indices(blocks: Sequence[int], depth: int) -> list[int]:
    """``blocks`` (negative ones count from the last) as indices into a stack of ``depth``."""
    indices = []
    for block in blocks:
        if not -depth <= block < depth:
            raise IndexError(f"block {block} of a trunk with {depth} blocks")
        indices.append(block % depth)
    return indices


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample, rescaling the survivors."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep
