"""The modality contract: what is generic for one raw tensor shape.

A modality owns three things for its tensor layout, so that domains only decode files and methods
only speak to tokens:

- a tokenizer (raw batch -> embedded tokens with their positional embedding),
- the per-token reconstruction target and its loss (for masked-modelling methods),
- its view pipeline: batched view steps that run on the device (crop-resize, flip, intensity,
  blur, ...) under a view spec it may extend with its own options, and its token masks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from fmcore.errors import ConfigError
from fmcore.modalities.masking import block_extents, block_mask, place_box, random_token_mask


@dataclass
class Tokens:
    """A batch of embedded tokens as the trunk consumes them.

    x:       (B, N, D) token embeddings without positional information.
    pos:     (B, N, D) or (1, N, D) positional embedding of each token (added by the trunk).
    grid:    token grid shape for grid modalities ((h, w), (d, h, w), (t, h, w)); None for points.
    groups:  points only: (B, N, K, 3) neighbourhood coordinates relative to each group centre.
    centers: points only: (B, N, 3) group centres.
    """

    x: Tensor
    pos: Tensor
    grid: tuple[int, ...] | None = None
    groups: Tensor | None = None
    centers: Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.x.shape[1]

    def select(self, keep: Tensor) -> Tokens:
        """Keep only the tokens at indices ``keep`` (B, M); the grid no longer applies."""
        return Tokens(
            x=gather_rows(self.x, keep),
            pos=gather_rows(self.pos, keep),
            grid=None,
            groups=None if self.groups is None else gather_rows(self.groups, keep),
            centers=None if self.centers is None else gather_rows(self.centers, keep),
        )


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, M) of ``values`` (B or 1, N, ...), as (B, M, ...): per-sample tokens,
    positions or targets at per-sample indices (a shared table is broadcast)."""
    values = values.expand(index.shape[0], *values.shape[1:])
    shape = index.shape + values.shape[2:]
    expanded = index.reshape(*index.shape, *([1] * (values.dim() - 2))).expand(shape)
    return torch.gather(values, 1, expanded)


class Tokenizer(nn.Module, ABC):
    """Turns a raw batch of one modality into :class:`Tokens`."""

    embed_dim: int

    @abstractmethod
    def forward(self, x: Tensor) -> Tokens: ...

    @abstractmethod
    def reconstruction_target(self, x: Tensor, tokens: Tokens, normalize: bool = True) -> Tensor:
        """Per-token reconstruction target (B, N, P) for the tokens made from ``x``;
        ``normalize`` asks for each token's values at zero mean and unit variance (MAE's
        normalised pixels) where the modality's target has an intensity to remove."""

    @property
    @abstractmethod
    def target_dim(self) -> int:
        """P, the size of one token's reconstruction target."""

    def valid_tokens(self, valid: Tensor) -> Tensor:
        """(B, N) bool: which tokens of a view hold data, from its valid-pixel mask ``valid``
        (:meth:`Modality.augment_with_valid`). Only layouts with pixels have such masks."""
        raise ConfigError(f"{type(self).__name__} tokens have no valid-pixel masks")

    @property
    @abstractmethod
    def size_multiple(self) -> tuple[int, ...]:
        """Per-axis multiple a view's size must be (the patch shape; 1 per axis for points)."""


@dataclass(frozen=True)
class ViewSpec:
    """One kind of augmented view a method asks for.

    size is the output size as a fraction of the domain's sample size (``data.size``), so one spec
    serves every modality: 1.0 is a global view, ~0.43 a DINO local crop (96 of 224 pixels).
    scale is the range of the fraction of the sample's area/volume/points that the crop covers.
    The remaining fields are probabilities or strengths of the photometric steps.
    """

    count: int = 1
    size: float = 1.0
    scale: tuple[float, float] = (0.4, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: float = 0.8
    jitter_strength: float = 0.4
    grayscale: float = 0.0
    blur: float = 0.0
    solarize: float = 0.0
    noise: float = 0.0
    time_scale: tuple[float, float] = (1.0, 1.0)  # video: share of the clip's frames a view spans

    @classmethod
    def from_config(cls, values: dict) -> ViewSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(
                f"unknown view option(s) {sorted(unknown)}; valid options are {sorted(known)}"
            )
        converted = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()}
        return cls(**converted)


class ViewStep(Protocol):
    """One batched on-device augmentation: a modality's view pipeline is a list of them
    (:meth:`Modality.view_steps`), and a domain may append its own (``Domain.view_steps``).

    A step that moves pixels (a crop, a flip, a temporal crop) has ``geometric = True``: a
    sample's valid-pixel mask goes through it with the pixels (:meth:`Modality.augment`).
    """

    def __call__(self, views: Tensor, generator: torch.Generator) -> Tensor: ...


@dataclass(frozen=True)
class ViewOp:
    """A :class:`ViewStep` made of a batched view function and its settings:
    ``fn(views, generator=generator, **settings)``; it prints as the call it makes."""

    fn: Callable[..., Tensor]
    settings: Mapping[str, Any] = field(default_factory=dict)
    random: bool = True  # False: a deterministic step, called without the generator
    geometric: bool = False  # True: it moves pixels, so a valid-pixel mask goes through it too

    def __call__(self, views: Tensor, generator: torch.Generator) -> Tensor:
        if not self.random:
            return self.fn(views, **self.settings)
        return self.fn(views, generator=generator, **self.settings)

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.settings.items())
        return f"{self.fn.__name__}({shown})"


@dataclass
class TokenizerSettings:
    """What a modality needs to build its tokenizer: the encoder width and the sample geometry."""

    embed_dim: int
    sample_size: tuple[int, ...]
    channels: int
    options: dict = field(default_factory=dict)


class Modality(ABC):
    """Tokenizer, reconstruction loss and batched views for one raw tensor layout."""

    name: ClassVar[str]
    #: human description of one sample's layout, e.g. "(C, H, W)"
    layout: ClassVar[str]
    #: the options a method's and a domain's view settings may use for this modality: a
    #: subclass of ViewSpec adds the modality's own (its view_steps read them)
    view_spec: ClassVar[type[ViewSpec]] = ViewSpec

    @abstractmethod
    def build_tokenizer(self, settings: TokenizerSettings) -> Tokenizer: ...

    @abstractmethod
    def reconstruction_loss(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Mean loss over the masked tokens only. pred/target (B, N, P), mask (B, N) bool."""

    @abstractmethod
    def view_steps(self, spec: ViewSpec, out_size: Sequence[int]) -> list[ViewStep]:
        """The modality's view pipeline for ``spec``: the steps that turn a raw batch into one
        view per sample of spatial size ``out_size``, in order. ``spec`` is a
        :attr:`view_spec`, so a modality with its own options reads them here."""

    def augment(
        self, batch: Tensor, spec: ViewSpec, out_size: Sequence[int], generator: torch.Generator
    ) -> Tensor:
        """One augmented view per sample of ``batch``: the :meth:`view_steps` applied in turn."""
        return self.augment_with_valid(batch, None, spec, out_size, generator)[0]

    def augment_with_valid(
        self,
        batch: Tensor,
        valid: Tensor | None,
        spec: ViewSpec,
        out_size: Sequence[int],
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`augment`, carrying ``valid`` (B, 1, *S) along: where the domain marks which
        pixels hold data (a fundus camera's circular field of view). It goes through the
        geometric steps with the pixels and comes back beside the view, each value the share
        of that view pixel inside the valid region; photometric steps leave it alone, and the
        view is the same with it or without it."""
        channels = batch.shape[1]
        for step in self.view_steps(spec, out_size):
            if valid is not None and getattr(step, "geometric", False):
                moved = step(torch.cat([batch, valid.to(batch.dtype)], dim=1), generator)
                batch, valid = moved[:, :channels], moved[:, channels:]
            else:
                batch = step(batch, generator)
        return batch, valid

    def view_size(
        self, sample_size: Sequence[int], fraction: float, multiple: Sequence[int]
    ) -> list[int]:
        """Size of a view that is ``fraction`` of the sample, rounded to token multiples."""
        return [
            max(m, round(s * fraction / m) * m) for s, m in zip(sample_size, multiple, strict=True)
        ]

    def token_mask(
        self,
        batch_size: int,
        tokens: Tokens,
        ratio: float,
        generator: torch.Generator,
        valid: Tensor | None = None,
    ) -> Tensor:
        """Token mask (B, N) bool with the same number of masked tokens in every sample:
        round(ratio * N), or with ``valid`` (B, N) bool, the tokens that hold data, every
        invalid token and ``ratio`` of the valid ones (:func:`random_token_mask`).

        Uniformly random by default; modalities with structure override it (tube masking for video).
        """
        return random_token_mask(
            batch_size, tokens.num_tokens, ratio, generator, tokens.x.device, valid
        )

    def block_extents(
        self,
        tokens: Tokens,
        scale: tuple[float, float],
        aspect: tuple[float, float],
        rng: np.random.Generator,
    ) -> tuple[int, ...]:
        """The size of one I-JEPA block for ``tokens``' layout: a box covering a share of the
        tokens uniform in ``scale`` with a log-uniform ``aspect`` (:func:`block_extents`);
        without a grid (point groups), a count of tokens."""
        if tokens.grid is None:
            return (max(1, round(rng.uniform(*scale) * tokens.num_tokens)),)
        return tuple(block_extents(tokens.grid, scale, aspect, rng))

    def place_block(
        self, tokens: Tokens, extents: Sequence[int], rng: np.random.Generator
    ) -> np.ndarray:
        """(N,) bool: a block of ``extents`` (from :meth:`block_extents`) at a random place;
        without a grid, that many random tokens."""
        if tokens.grid is None:
            mask = np.zeros(tokens.num_tokens, dtype=bool)
            mask[rng.choice(tokens.num_tokens, size=extents[0], replace=False)] = True
            return mask
        mask = np.zeros(tokens.grid, dtype=bool)
        mask[place_box(extents, tokens.grid, rng)] = True
        return mask.reshape(-1)

    def block_token_mask(
        self,
        tokens: Tokens,
        num_masked: int,
        rng: np.random.Generator,
        max_block: int | None = None,
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
    ) -> np.ndarray:
        """One sample's block-wise mask (N,) bool with exactly ``num_masked`` tokens masked, for
        BEiT-style masked-token objectives (iBOT, I-JEPA).

        Boxes on the token grid (:func:`block_mask`), topped up with random tokens where boxes
        do not fit, so the count is exact; a layout without a grid (point groups) gets random
        tokens. A modality with other structure overrides it (e.g. blocks that span time).
        """
        num_tokens = tokens.num_tokens
        mask = (
            block_mask(tokens.grid, num_masked, rng, max_block=max_block, aspect=aspect)
            if tokens.grid is not None
            else np.zeros(num_tokens, dtype=bool)
        )
        shortfall = num_masked - int(mask.sum())
        if shortfall > 0:
            free = np.flatnonzero(~mask)
            mask[rng.choice(free, size=shortfall, replace=False)] = True
        return mask
