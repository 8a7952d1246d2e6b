"""Linear SVM on frozen features: the protocol Point-BERT, Point-MAE and I2P-MAE report on
ModelNet40 (scikit-learn's LinearSVC on the pretrained encoder's features), so a user can set
their own data beside the papers' numbers.

The regularisation strength C is the one setting, swept on a validation split carved
(stratified) out of the training split as the linear probe sweeps its learning rate; the chosen
C is refit on the whole training split and scored once on the test split. Features are
standardised on the training split. Test scores are the one-vs-rest decision values through a
softmax: their argmax is the SVM's prediction, and they rank samples for AUROC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fmcore.eval.linear import Standardize, stratified_split

if TYPE_CHECKING:
    from sklearn.svm import LinearSVC

MAX_ITERATIONS = 10_000  # liblinear's default (1000) stops short on unscaled deep features


@dataclass
class SvmResult:
    """Test scores (M, C) summing to 1 per row, the chosen C and the sweep's accuracies."""

    scores: Tensor
    c: float
    sweep: dict[str, float] = field(default_factory=dict)

    @property
    def c_at_edge(self) -> bool:
        values = [float(c) for c in self.sweep]
        return len(values) > 1 and self.c in (min(values), max(values))


def fit_svm(features: Tensor, labels: Tensor, c: float, seed: int) -> LinearSVC:
    from sklearn.svm import LinearSVC

    return LinearSVC(C=c, max_iter=MAX_ITERATIONS, random_state=seed).fit(
        features.numpy(), labels.numpy()
    )


def decision_scores(svm: LinearSVC, features: Tensor, num_classes: int) -> Tensor:
    """(M, num_classes) decision values; a two-class SVM's one value becomes (-d, d), and a
    class absent from training gets -inf."""
    values = torch.from_numpy(svm.decision_function(features.numpy())).float()
    if values.dim() == 1:
        values = torch.stack([-values, values], dim=1)
    scores = torch.full((len(features), num_classes), -torch.inf)
    scores[:, torch.from_numpy(svm.classes_).long()] = values
    return scores


def svm_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    *,
    cs: Sequence[float],
    val_fraction: float = 0.2,
    seed: int = 0,
) -> SvmResult:
    """Sweep ``cs`` on a carved validation split, refit the best on all of train, score test."""
    if not cs:
        raise ValueError("svm_probe needs at least one C")
    train_features, train_labels = train_features.float(), train_labels.long()
    sweep: dict[str, float] = {}
    if len(cs) > 1:
        fit_index, val_index = stratified_split(train_labels, val_fraction, seed)
        standardize = Standardize(train_features[fit_index])
        for c in cs:
            svm = fit_svm(standardize(train_features[fit_index]), train_labels[fit_index], c, seed)
            predicted = svm.predict(standardize(train_features[val_index]).numpy())
            accuracy = (torch.from_numpy(predicted) == train_labels[val_index]).float().mean()
            sweep[str(c)] = float(accuracy)
    best = max(cs, key=lambda c: sweep.get(str(c), 0.0))  # first of equals: the smaller C
    standardize = Standardize(train_features)
    svm = fit_svm(standardize(train_features), train_labels, best, seed)
    values = decision_scores(svm, standardize(test_features.float()), num_classes)
    return SvmResult(values.softmax(dim=1), float(best), sweep)
