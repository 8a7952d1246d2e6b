"""Classification metrics through torchmetrics, so every protocol reports the same definitions.

The metrics are computed for a batch of index rows at once (:func:`resampled_metrics`), so the
bootstrap's resamples and the point estimate (one row holding every sample) share one definition.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_f1_score,
    multiclass_recall,
)


@torch.no_grad()
def resampled_metrics(
    scores: Tensor, labels: Tensor, num_classes: int, indices: Tensor
) -> dict[str, Tensor]:
    """Each metric (R,) on each row of ``indices`` (R, M), a row being the samples it scores.

    Accuracy, balanced accuracy (macro recall, scikit-learn's ``balanced_accuracy_score``) and
    macro F1 come from one vectorised call per metric (torchmetrics' ``samplewise`` mode, one
    row a "sample"); macro one-vs-rest AUROC has no such mode and runs per row.
    """
    scores = scores.float().cpu()
    labels = labels.long().cpu()
    predictions = scores.argmax(dim=1)[indices]  # (R, M)
    targets = labels[indices]
    per_row = {"num_classes": num_classes, "multidim_average": "samplewise"}
    return {
        "accuracy": multiclass_accuracy(predictions, targets, average="micro", **per_row),
        "balanced_accuracy": multiclass_recall(predictions, targets, average="macro", **per_row),
        "f1_macro": multiclass_f1_score(predictions, targets, average="macro", **per_row),
        "auroc_macro": torch.stack(
            [
                multiclass_auroc(scores[row], labels[row], num_classes, average="macro")
                for row in indices
            ]
        ),
    }


def classification_metrics(scores: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and macro one-vs-rest AUROC of the whole set.

    ``scores`` (N, C) are class probabilities (rows summing to 1); predictions are their argmax.
    """
    everything = torch.arange(len(labels)).unsqueeze(0)
    metrics = resampled_metrics(scores, labels, num_classes, everything)
    return {name: float(values[0]) for name, values in metrics.items()}
