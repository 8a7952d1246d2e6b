"""Few-shot classification of frozen features: k labelled examples per class, several draws.

The classifier is SimpleShot's nearest class mean with CL2N features (Wang et al., 2019, as UNI
and other pathology foundation models report few-shot results): features are centred on the
mean of the support set and L2-normalised, each class is the mean of its support features, and
a test feature goes to the nearest class mean. It has no hyperparameter, which matters because
one example per class leaves nothing to tune on.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import mean, stdev

import torch
import torch.nn.functional as F
from torch import Tensor

from fmcore.errors import ConfigError
from fmcore.eval.metrics import classification_metrics
from fmcore.eval.sweep import shuffled_classes


def draw_support(labels: Tensor, num_classes: int, shots: int, seed: int) -> Tensor:
    """Indices of ``shots`` examples of every class, drawn without replacement.

    A seed's draws are nested: its 5-shot support extends its 1-shot support, so shot counts
    differ only by the added examples.
    """
    counts = torch.bincount(labels, minlength=num_classes)
    short = [f"class {c}: {int(counts[c])}" for c in range(num_classes) if counts[c] < shots]
    if short:
        raise ConfigError(
            f"{shots}-shot needs {shots} training examples of every class; too few for"
            f" {', '.join(short)}: lower eval.shots"
        )
    return torch.cat([members[:shots] for members in shuffled_classes(labels, seed)])


@torch.no_grad()
def nearest_mean_scores(
    support_features: Tensor, support_labels: Tensor, test_features: Tensor, num_classes: int
) -> Tensor:
    """Class probabilities (M, C): a softmax over negative distances to the class means, whose
    argmax is the nearest class mean (AUROC needs scores, not only the decision)."""
    centre = support_features.float().mean(dim=0, keepdim=True)
    support = F.normalize(support_features.float() - centre, dim=1)
    test = F.normalize(test_features.float() - centre, dim=1)
    sums = torch.zeros(num_classes, support.shape[1]).index_add_(0, support_labels, support)
    means = sums / torch.bincount(support_labels, minlength=num_classes).unsqueeze(1)
    return (-torch.cdist(test, means)).softmax(dim=1)


def fewshot_metrics(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    *,
    shots: Sequence[int],
    seeds: Sequence[int],
) -> dict[int, list[dict[str, float]]]:
    """The metrics of every (shot count, seed): ``{shots: [metrics of each seed]}``."""
    if len(set(seeds)) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"eval.seeds must be two or more different seeds (a spread needs several draws),"
            f" not {list(seeds)}"
        )
    if not shots or min(shots) < 1:
        raise ConfigError(f"eval.shots must be positive example counts, not {list(shots)}")
    results: dict[int, list[dict[str, float]]] = {}
    for count in shots:
        results[count] = []
        for seed in seeds:
            support = draw_support(train_labels, num_classes, count, seed)
            scores = nearest_mean_scores(
                train_features[support], train_labels[support], test_features, num_classes
            )
            results[count].append(classification_metrics(scores, test_labels, num_classes))
    return results


def summarize(results: dict[int, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """``metrics`` (means over seeds) and ``std`` (sample standard deviations), keyed
    ``<metric>_<k>shot``, so every protocol's ``eval.json`` has flat name -> value metrics."""
    means: dict[str, float] = {}
    deviations: dict[str, float] = {}
    for count, per_seed in results.items():
        for name in per_seed[0]:
            values = [metrics[name] for metrics in per_seed]
            means[f"{name}_{count}shot"] = mean(values)
            deviations[f"{name}_{count}shot"] = stdev(values)
    return {"metrics": means, "std": deviations}
