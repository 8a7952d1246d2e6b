"""k-nearest-neighbour classification of frozen features, as in DINO (Caron et al., 2021).

DINO's protocol: cosine similarity to every training feature, the ``k`` most similar vote, each
vote weighted ``exp(similarity / T)``. The uniform mode (one vote per neighbour) exists so the
implementation can be checked against scikit-learn's ``KNeighborsClassifier``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Voting = Literal["weighted", "uniform"]


@torch.no_grad()
def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    voting: Voting = "weighted",
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores (M, C) for the test features: summed neighbour votes, rows summing to 1.

    Scores rather than only predictions so AUROC can be computed; the argmax of a row is the
    predicted class (ties go to the lower class index, as in scikit-learn).
    """
    if voting not in ("weighted", "uniform"):
        raise ValueError(f"voting must be 'weighted' or 'uniform', not '{voting}'")
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    scores = []
    for start in range(0, test.shape[0], chunk_size):  # bounds memory to chunk x N similarities
        similarity = test[start : start + chunk_size] @ train.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        if voting == "weighted":
            weights = (top_similarity / temperature).exp()
        else:
            weights = torch.ones_like(top_similarity)
        votes = torch.zeros(top_index.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_index], weights)
        scores.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(scores)


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    **options,
) -> Tensor:
    """Predicted classes (M,) of the test features; ``options`` as for :func:`knn_scores`."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes, **options)
    return scores.argmax(dim=1)
