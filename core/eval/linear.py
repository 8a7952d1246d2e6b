"""Linear probe: a logistic-regression layer trained with torch on frozen features.

The learning rate is the probe's one sensitive setting, swept on held-out training data
(:mod:`fmcore.eval.sweep`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmcore.eval.sweep import SweptProbe, sweep_and_refit

DEFAULT_LRS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


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
) -> SweptProbe:
    """Sweep ``lrs`` on a carved validation split, refit the best on all of train, score test
    (scores are softmax probabilities)."""

    def fit(features: Tensor, labels: Tensor, lr: float) -> Callable[[Tensor], Tensor]:
        layer = train_linear(
            features,
            labels,
            num_classes,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            weight_decay=weight_decay,
            seed=seed,
        )

        def score(inputs: Tensor) -> Tensor:
            with torch.no_grad():
                return layer(inputs).softmax(dim=1)

        return score

    return sweep_and_refit(
        train_features,
        train_labels,
        test_features,
        lrs,
        fit,
        val_fraction=val_fraction,
        seed=seed,
    )
