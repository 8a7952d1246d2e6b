"""Linear probe: a logistic-regression layer trained with torch on frozen features.

The learning rate is the probe's one sensitive setting, so a small sweep is picked on a
validation split carved (stratified) out of the training split; the chosen rate is then refit
on the whole training split and evaluated once on the test split, which the sweep never sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_LRS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class ProbeResult:
    """Test scores (M, C) as probabilities, the chosen lr and the sweep's validation accuracies."""

    scores: Tensor
    lr: float
    sweep: dict[str, float] = field(default_factory=dict)

    @property
    def lr_at_edge(self) -> bool:
        """Whether the sweep chose its smallest or largest rate: the optimum may lie outside,
        and the sweep should be widened on that side."""
        rates = [float(lr) for lr in self.sweep]
        return len(rates) > 1 and self.lr in (min(rates), max(rates))


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
    """Feature-wise standardisation fitted on the training features: it makes one lr grid fit
    encoders whose feature scales differ by orders of magnitude."""

    def __init__(self, features: Tensor) -> None:
        self.mean = features.mean(dim=0, keepdim=True)
        self.std = features.std(dim=0, keepdim=True).clamp_min(1e-6)

    def __call__(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std


def train_linear(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    lr: float,
    epochs: int = 100,
    batch_size: int = 256,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> nn.Linear:
    """A linear layer trained with AdamW and cross-entropy on (already standardised) features."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(labels) // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(layer(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return layer.eval()


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    *,
    lrs: Sequence[float] = DEFAULT_LRS,
    val_fraction: float = 0.2,
    epochs: int = 100,
    batch_size: int = 256,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> ProbeResult:
    """Sweep ``lrs`` on a carved validation split, refit the best on all of train, score test."""
    if not lrs:
        raise ValueError("linear_probe needs at least one learning rate")
    train_features = train_features.float()
    train_labels = train_labels.long()
    options = {
        "epochs": epochs,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "seed": seed,
    }
    sweep: dict[str, float] = {}
    if len(lrs) > 1:
        fit_index, val_index = stratified_split(train_labels, val_fraction, seed)
        standardize = Standardize(train_features[fit_index])
        fit_x = standardize(train_features[fit_index])
        val_x = standardize(train_features[val_index])
        for lr in lrs:
            layer = train_linear(fit_x, train_labels[fit_index], num_classes, lr=lr, **options)
            with torch.no_grad():
                predictions = layer(val_x).argmax(dim=1)
            sweep[str(lr)] = float((predictions == train_labels[val_index]).float().mean())
    best = max(lrs, key=lambda lr: sweep.get(str(lr), 0.0))  # first of equals: the smaller lr
    standardize = Standardize(train_features)
    layer = train_linear(standardize(train_features), train_labels, num_classes, lr=best, **options)
    with torch.no_grad():
        scores = layer(standardize(test_features.float())).softmax(dim=1)
    return ProbeResult(scores, float(best), sweep)
