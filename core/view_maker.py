"""Augmented views of a raw batch on the device: modality ops, domain steps, normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from fmcore.modalities.base import Modality, ViewSpec, ViewStep
from fmcore.transport import unit_float


class ViewMaker:
    """Turns a method's :class:`ViewSpec` into views of a batch as workers hand it over.

    ``to_unit`` maps that batch to floats in [0, 1] (``Domain.to_unit``; by default unsigned
    integers by their full scale, floats unchanged), on the device, before the first view step.

    ``overrides`` are the domain's view policy (``data.views``), applied to every spec: digits are
    not mirror-symmetric (``flip: 0``), a grayscale modality has no saturation to jitter, and so on.
    """

    def __init__(
        self,
        modality: Modality,
        sample_size: Sequence[int],
        size_multiple: Sequence[int],
        domain_steps: Sequence[ViewStep] = (),
        normalize: Callable[[Tensor], Tensor] = lambda views: views,
        overrides: dict[str, Any] | None = None,
        to_unit: Callable[[Tensor], Tensor] = unit_float,
    ) -> None:
        self.modality = modality
        self.sample_size = tuple(sample_size)
        self.size_multiple = tuple(size_multiple)
        self.domain_steps = list(domain_steps)
        self.normalize = normalize
        self.to_unit = to_unit
        self.overrides = dict(overrides or {})
        modality.view_spec.from_config(self.overrides)  # names every unknown key of the policy
        self.overrides = {
            k: tuple(v) if isinstance(v, list | tuple) else v for k, v in self.overrides.items()
        }

    def __call__(self, data: Tensor, spec: ViewSpec, generator: torch.Generator) -> list[Tensor]:
        """``spec.count`` augmented, normalised views of ``data``, each a batch like ``data``."""
        return [view for view, _ in self.with_valid(data, None, spec, generator)]

    def with_valid(
        self, data: Tensor, valid: Tensor | None, spec: ViewSpec, generator: torch.Generator
    ) -> list[tuple[Tensor, Tensor | None]]:
        """The views of :meth:`__call__`, each beside where its pixels hold data: ``valid``
        (a batch's valid-pixel mask, :attr:`Batch.valid`) moved by the same crops and flips
        (:meth:`Modality.augment_with_valid`), or None when ``valid`` is."""
        spec = replace(spec, **self.overrides)
        out_size = self.modality.view_size(self.sample_size, spec.size, self.size_multiple)
        views = []
        # Views are data preparation: full precision even inside the engine's bf16 autocast.
        with torch.autocast(data.device.type, enabled=False):
            unit = self.to_unit(data)
            valid = None if valid is None else valid.float()
            for _ in range(spec.count):
                view, view_valid = self.modality.augment_with_valid(
                    unit, valid, spec, out_size, generator
                )
                for step in self.domain_steps:
                    view = step(view, generator)
                views.append((self.normalize(view), view_valid))
        return views
