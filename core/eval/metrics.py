"""Classification metrics through torchmetrics, so every protocol reports the same definitions."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassRecall,
)


@torch.no_grad()
def classification_metrics(scores: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy (macro recall), macro F1 and macro one-vs-rest AUROC.

    ``scores`` (N, C) are class probabilities (rows summing to 1); predictions are their argmax.
    Balanced accuracy is torchmetrics' macro-averaged recall, which is scikit-learn's
    ``balanced_accuracy_score``.
    """
    scores = scores.float().cpu()
    labels = labels.long().cpu()
    predictions = scores.argmax(dim=1)
    metrics = {
        "accuracy": MulticlassAccuracy(num_classes, average="micro")(predictions, labels),
        "balanced_accuracy": MulticlassRecall(num_classes, average="macro")(predictions, labels),
        "f1_macro": MulticlassF1Score(num_classes, average="macro")(predictions, labels),
        "auroc_macro": MulticlassAUROC(num_classes, average="macro")(scores, labels),
    }
    return {name: float(value) for name, value in metrics.items()}
