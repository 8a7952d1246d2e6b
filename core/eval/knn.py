"""k-nearest-neighbour classification of frozen features, as in DINO (Caron et al., 2021).

DINO's protocol: cosine similarity to every training feature, the ``k`` most similar vote, each
vote weighted ``exp(similarity / T)``. The uniform mode (one vote per neighbour) exists so the
implementation can be checked against scikit-learn's ``KNeighborsClassifier``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from fmcore.config_sections import VOTINGS, KnnSection, section
from fmcore.domain import Domain
from fmcore.encoder import Encoder, feature_kind
from fmcore.eval.features import Features, SplitFeatures


@torch.no_grad()
def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    voting: str = "weighted",
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores (M, C) for the test features: summed neighbour votes, rows summing to 1.

    Scores rather than only predictions so AUROC can be computed; the argmax of a row is the
    predicted class (ties go to the lower class index, as in scikit-learn).
    """
    if voting not in VOTINGS:
        raise ValueError(f"voting must be one of {VOTINGS}, not '{voting}'")
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


@dataclass(frozen=True)
class KnnVote:
    """The kNN vote the ``eval`` section sets (``configs/eval/knn.yaml``): k, T and voting."""

    k: int
    temperature: float
    voting: str

    @classmethod
    def from_section(cls, settings: KnnSection) -> KnnVote:
        return cls(settings.k, settings.temperature, settings.voting)

    def scores(self, train: Features, test: Features, num_classes: int) -> Tensor:
        """Class scores (M, C) of the test features (see :func:`knn_scores`)."""
        return knn_scores(
            train.features,
            train.labels,
            test.features,
            num_classes,
            k=self.k,
            temperature=self.temperature,
            voting=self.voting,
        )


@dataclass(frozen=True)
class KnnProtocol:
    """``eval=knn`` as one object: which features, and how they vote. ``fmcore eval``, periodic
    evaluation during training and a federated site's score of the global model all use it."""

    features: SplitFeatures
    vote: KnnVote

    @classmethod
    def for_run(cls, config: DictConfig) -> KnnProtocol:
        """From a run's config: the ``eval`` section, features defaulting to the method's own."""
        settings = section(config, "eval", KnnSection)
        kind = (
            feature_kind(settings.features, "eval.features")
            if settings.features
            else feature_kind(config.method.get("features"), "method.features")
        )
        return cls(SplitFeatures.from_section(settings, kind), KnnVote.from_section(settings))

    def metrics(
        self,
        encoder: Encoder,
        domain: Domain,
        device: torch.device | str,
        num_workers: int,
    ) -> dict[str, float]:
        """Classification metrics of ``encoder``'s frozen features on the two splits."""
        # Imported here: torchmetrics takes seconds to import, and every training run imports
        # this module whether or not it evaluates.
        from fmcore.eval.metrics import classification_metrics

        train, test = self.features.extract(encoder, domain, device, num_workers)
        num_classes = int(max(train.labels.max(), test.labels.max())) + 1
        scores = self.vote.scores(train, test, num_classes)
        return classification_metrics(scores, test.labels, num_classes)
