"""``fmcore eval``: the protocol ``eval.name`` picks from :data:`PROTOCOLS`, into ``eval.json``.

A protocol is a function ``(config, registry, words) -> result`` that writes its result with
:func:`fmcore.eval.results.write_result` and returns it. knn, linear, svm and fewshot share
:func:`evaluate_features`: frozen features of two labelled splits, then the protocol's own
scoring of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from omegaconf import DictConfig

from fmcore.config import as_dict
from fmcore.config_sections import (
    FeatureEvalSection,
    FewshotSection,
    KnnSection,
    LinearSection,
    SvmSection,
    eval_section,
)
from fmcore.distributed import pick_device
from fmcore.errors import ConfigError
from fmcore.eval.bc import evaluate_bc
from fmcore.eval.bootstrap import metrics_with_intervals
from fmcore.eval.features import Features, SplitFeatures
from fmcore.eval.fewshot import fewshot_metrics, summarize
from fmcore.eval.knn import KnnVote
from fmcore.eval.linear import linear_probe
from fmcore.eval.loading import load_encoder
from fmcore.eval.mil import evaluate_mil
from fmcore.eval.results import write_result
from fmcore.eval.svm import svm_probe
from fmcore.eval.sweep import SweptProbe
from fmcore.plugin_manager import Registry

Protocol = Callable[[DictConfig, Registry, Sequence[str]], dict[str, Any]]
# (eval settings, train features, test features, number of classes, seed) -> the protocol's
# part of eval.json: "metrics" (name -> value) and what else it reports beside them.
FeatureScoring = Callable[[Any, Features, Features, int, int], dict[str, Any]]


def require_protocol(words: Sequence[str]) -> None:
    """Refuse early, with the choices, when no ``eval=`` is given (``checkpoint`` and the
    ``eval`` section exist only once an evaluation is chosen)."""
    if not any(word.split("=", 1)[0] == "eval" for word in words):
        raise ConfigError(_choose())


def _choose() -> str:
    return f"choose an evaluation: eval={' or eval='.join(PROTOCOLS)}"


def evaluate(config: DictConfig, registry: Registry, words: Sequence[str] = ()) -> dict[str, Any]:
    """Run the chosen protocol, which writes ``eval.json`` into ``run.dir``; returns its content."""
    settings = config.get("eval")
    protocol = PROTOCOLS.get(str(settings.get("name"))) if settings is not None else None
    if protocol is None:
        raise ConfigError(_choose())
    return protocol(config, registry, words)


def evaluate_features(
    scoring: FeatureScoring, config: DictConfig, registry: Registry, words: Sequence[str]
) -> dict[str, Any]:
    """Frozen features of ``eval.train_split`` and ``eval.test_split``, scored by ``scoring``."""
    settings = eval_section(config)
    assert isinstance(settings, FeatureEvalSection)  # PROTOCOLS maps only these to this function
    loaded = load_encoder(config, registry, words)
    splits = SplitFeatures.from_section(
        settings, loaded.feature_kind(settings.features, "eval.features")
    )
    train, test = splits.extract(
        loaded.encoder,
        loaded.domain,
        pick_device(str(config.trainer.device), 0),
        config.trainer.num_workers,
    )
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    seed = config.run.seed
    result = {
        "protocol": settings.name,
        **scoring(settings, train, test, num_classes, seed),
        "settings": as_dict(config.eval),
        "checkpoint": loaded.checkpoint,
        "checkpoint_step": loaded.metadata.get("step"),
        "domain": str(config.domain.name),
        "encoder": loaded.encoder_config,
        "splits": {splits.train_split: len(train), splits.test_split: len(test)},
        "num_classes": num_classes,
        "features": splits.kind,
        "feature_dim": int(train.features.shape[1]),
        "seed": seed,
    }
    return write_result(config, result)


def score_knn(
    settings: KnnSection, train: Features, test: Features, num_classes: int, seed: int
) -> dict[str, Any]:
    scores = KnnVote.from_section(settings).scores(train, test, num_classes)
    return metrics_with_intervals(
        scores, test.labels, num_classes, resamples=settings.bootstrap, seed=seed
    )


def swept_report(
    probe: SweptProbe, setting: str, test: Features, num_classes: int, bootstrap: int, seed: int
) -> dict[str, Any]:
    """A swept probe's part of eval.json: the test metrics, the chosen ``setting`` (``lr``,
    ``c``), whether it lies at the sweep's edge, and the sweep's validation accuracies."""
    return {
        **metrics_with_intervals(
            probe.scores, test.labels, num_classes, resamples=bootstrap, seed=seed
        ),
        f"chosen_{setting}": probe.chosen,
        f"chosen_{setting}_at_sweep_edge": probe.at_edge,
        "sweep_val_accuracy": probe.sweep,
    }


def score_linear(
    settings: LinearSection, train: Features, test: Features, num_classes: int, seed: int
) -> dict[str, Any]:
    probe = linear_probe(
        train.features,
        train.labels,
        test.features,
        num_classes,
        lrs=settings.lrs,
        val_fraction=settings.val_fraction,
        epochs=settings.epochs,
        batch_size=settings.probe_batch_size,
        weight_decay=settings.weight_decay,
        seed=seed,
    )
    return swept_report(probe, "lr", test, num_classes, settings.bootstrap, seed)


def score_svm(
    settings: SvmSection, train: Features, test: Features, num_classes: int, seed: int
) -> dict[str, Any]:
    probe = svm_probe(
        train.features,
        train.labels,
        test.features,
        num_classes,
        cs=settings.cs,
        val_fraction=settings.val_fraction,
        seed=seed,
    )
    return swept_report(probe, "c", test, num_classes, settings.bootstrap, seed)


def score_fewshot(
    settings: FewshotSection, train: Features, test: Features, num_classes: int, seed: int
) -> dict[str, Any]:
    per_seed = fewshot_metrics(
        train.features,
        train.labels,
        test.features,
        test.labels,
        num_classes,
        shots=settings.shots,
        seeds=settings.seeds,
    )
    return {**summarize(per_seed), "per_seed": {f"{k}shot": v for k, v in per_seed.items()}}


PROTOCOLS: dict[str, Protocol] = {
    "knn": partial(evaluate_features, score_knn),
    "linear": partial(evaluate_features, score_linear),
    "svm": partial(evaluate_features, score_svm),
    "fewshot": partial(evaluate_features, score_fewshot),
    "mil": evaluate_mil,
    "bc": evaluate_bc,
}


def format_table(result: dict[str, Any]) -> str:
    """A small plain-text table of the metrics, with the standard deviation over seeds and the
    bootstrap interval where the protocol reports them, headed by what was evaluated."""
    splits = ", ".join(f"{name} {count}" for name, count in result["splits"].items())
    deviations = result.get("std")
    intervals = result.get("ci95")
    header = f"{'metric':<26}{'value':>8}"
    header += f"{'std':>8}" if deviations else ""
    header += f"  {'95% CI':<17}" if intervals else ""
    lines = [
        f"{result['protocol']} on {result['domain']} ({splits}); checkpoint {result['checkpoint']}",
        header.rstrip(),
    ]
    for name, value in result["metrics"].items():
        line = f"{name:<26}{value:>8.4f}"
        line += f"{deviations[name]:>8.4f}" if deviations else ""
        line += f"  [{intervals[name][0]:.4f}, {intervals[name][1]:.4f}]" if intervals else ""
        lines.append(line)
    if "chosen_lr" in result:
        edge = " (the edge of eval.lrs: widen it)" if result["chosen_lr_at_sweep_edge"] else ""
        lines.append(f"chosen lr {result['chosen_lr']:g}{edge}")
    if "chosen_c" in result:
        edge = " (the edge of eval.cs: widen it)" if result["chosen_c_at_sweep_edge"] else ""
        lines.append(f"chosen C {result['chosen_c']:g}{edge}")
    return "\n".join(lines)
