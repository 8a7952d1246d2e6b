"""Linear SVM on frozen features: the protocol Point-BERT, Point-MAE and I2P-MAE report on
ModelNet40 (scikit-learn's LinearSVC on the pretrained encoder's features), so a user can set
their own data beside the papers' numbers.

The regularisation strength C is the one setting, swept on held-out training data as the linear
probe sweeps its learning rate (:mod:`fmcore.eval.sweep`). Test scores are the one-vs-rest
decision values through a softmax: their argmax is the SVM's prediction, and they rank samples
for AUROC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fmcore.eval.sweep import SweptProbe, sweep_and_refit

MAX_ITERATIONS = 10_000  # liblinear's default (1000) stops short on deep features


def svm_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    *,
    cs: Sequence[float],
    val_fraction: float = 0.2,
    seed: int = 0,
) -> SweptProbe:
    """Sweep ``cs`` on a carved validation split, refit the best on all of train, score test.
    A class absent from the training split scores 0."""

    def fit(features: Tensor, labels: Tensor, c: float) -> Callable[[Tensor], Tensor]:
        from sklearn.svm import LinearSVC

        svm = LinearSVC(C=c, max_iter=MAX_ITERATIONS, random_state=seed)
        svm.fit(features.numpy(), labels.numpy())
        classes = torch.from_numpy(svm.classes_).long()

        def score(inputs: Tensor) -> Tensor:
            values = torch.from_numpy(svm.decision_function(inputs.numpy())).float()
            if values.dim() == 1:  # two classes: one value, positive for the second
                values = torch.stack([-values, values], dim=1)
            scores = torch.full((len(inputs), num_classes), -torch.inf)
            scores[:, classes] = values
            return scores.softmax(dim=1)

        return score

    return sweep_and_refit(
        train_features, train_labels, test_features, cs, fit, val_fraction=val_fraction, seed=seed
    )
