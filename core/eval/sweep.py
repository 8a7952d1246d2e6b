"""One setting of a classifier on frozen features chosen on held-out training data: the linear
probe's learning rate, the SVM's C.

The setting is swept on a validation split carved (stratified) out of the training split; the
best is refit on the whole training split and scores the test split once, which the sweep never
sees. Features are standardised with the statistics of the data each fit sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

# (standardised features, labels, setting) -> a scorer of standardised features: (M, C) scores
Fit = Callable[[Tensor, Tensor, float], Callable[[Tensor], Tensor]]


@dataclass
class SweptProbe:
    """Test scores (M, C) as probabilities, the chosen setting and the sweep's validation
    accuracies by setting."""

    scores: Tensor
    chosen: float
    sweep: dict[str, float] = field(default_factory=dict)

    @property
    def at_edge(self) -> bool:
        """Whether the sweep chose its smallest or largest setting: the optimum may lie outside,
        and the sweep should be widened on that side."""
        settings = [float(value) for value in self.sweep]
        return len(settings) > 1 and self.chosen in (min(settings), max(settings))


def shuffled_classes(labels: Tensor, seed: int) -> list[Tensor]:
    """Each class's sample indices in a seeded random order, classes in ascending order."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        shuffled.append(members[torch.randperm(len(members), generator=generator)])
    return shuffled


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, validation indices): ``fraction`` of each class (at least one sample of
    every class with two or more) goes to validation, so no class is missing from either."""
    train, val = [], []
    for members in shuffled_classes(labels, seed):
        count = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        val.append(members[:count])
        train.append(members[count:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


class Standardize:
    """Feature-wise standardisation fitted on the training features: it makes one grid of
    settings fit encoders whose feature scales differ by orders of magnitude."""

    def __init__(self, features: Tensor) -> None:
        self.mean = features.mean(dim=0, keepdim=True)
        std = features.std(dim=0, keepdim=True)
        # a column constant on train is only centred: dividing by a tiny spread would blow any
        # later deviation up a million times
        self.std = torch.where(std > 1e-6, std, torch.ones_like(std))

    def __call__(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std

    def inverse(self, standardised: Tensor) -> Tensor:
        return standardised * self.std + self.mean


def sweep_and_refit(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    settings: Sequence[float],
    fit: Fit,
    *,
    val_fraction: float,
    seed: int,
) -> SweptProbe:
    """Sweep ``settings`` on a carved validation split (one setting: no sweep), refit the best
    on all of train, score test."""
    if not settings:
        raise ValueError("a sweep needs at least one setting")
    train_features, train_labels = train_features.float(), train_labels.long()
    sweep: dict[str, float] = {}
    if len(settings) > 1:
        fit_index, val_index = stratified_split(train_labels, val_fraction, seed)
        standardize = Standardize(train_features[fit_index])
        val_features = standardize(train_features[val_index])
        for setting in settings:
            scorer = fit(standardize(train_features[fit_index]), train_labels[fit_index], setting)
            predictions = scorer(val_features).argmax(dim=1)
            sweep[str(setting)] = float((predictions == train_labels[val_index]).float().mean())
    best = max(settings, key=lambda value: sweep.get(str(value), 0.0))  # first of equals
    standardize = Standardize(train_features)
    scorer = fit(standardize(train_features), train_labels, best)
    return SweptProbe(scorer(standardize(test_features.float())), float(best), sweep)
