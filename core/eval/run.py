"""``fmcore eval``: features of two labelled splits, one protocol, metrics into ``eval.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fmcore.config import as_dict
from fmcore.engine.checkpoint import atomic_write_text
from fmcore.engine.distributed import pick_device
from fmcore.errors import ConfigError
from fmcore.eval.features import extract_features
from fmcore.eval.knn import knn_scores
from fmcore.eval.linear import linear_probe
from fmcore.eval.loading import load_encoder
from fmcore.eval.metrics import classification_metrics
from fmcore.plugin_manager import Registry

EVAL_FILE = "eval.json"
PROTOCOLS = ("knn", "linear")


def require_protocol(words: Sequence[str]) -> None:
    """Refuse early, with the choices, when no ``eval=`` is given (``checkpoint`` and the
    ``eval`` section exist only once an evaluation is chosen)."""
    if not any(word.split("=", 1)[0] == "eval" for word in words):
        raise ConfigError(f"choose an evaluation: eval={' or eval='.join(PROTOCOLS)}")


def eval_run_dir(config: DictConfig) -> Path:
    if config.run.dir:
        return Path(str(config.run.dir))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"eval-{config.domain.name}-{config.eval.name}-{stamp}"


def evaluate(config: DictConfig, registry: Registry, words: Sequence[str] = ()) -> dict[str, Any]:
    """Run the chosen protocol and write ``eval.json`` into ``run.dir``; returns its content."""
    settings = config.get("eval")
    if settings is None or settings.get("name") not in PROTOCOLS:
        raise ConfigError(f"choose an evaluation: eval={' or eval='.join(PROTOCOLS)}")
    loaded = load_encoder(config, registry, words)
    device = pick_device(str(config.trainer.device), 0)
    extract = {
        "batch_size": int(settings.batch_size),
        "device": device,
        "l2_normalize": bool(settings.l2_normalize),
        "num_workers": int(config.trainer.num_workers),
    }
    train = extract_features(loaded.encoder, loaded.domain, str(settings.train_split), **extract)
    test = extract_features(loaded.encoder, loaded.domain, str(settings.test_split), **extract)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    extra: dict[str, Any] = {}
    if settings.name == "knn":
        scores = knn_scores(
            train.features,
            train.labels,
            test.features,
            num_classes,
            k=int(settings.k),
            temperature=float(settings.temperature),
            voting=str(settings.voting),
        )
    else:
        probe = linear_probe(
            train.features,
            train.labels,
            test.features,
            num_classes,
            lrs=[float(lr) for lr in settings.lrs],
            val_fraction=float(settings.val_fraction),
            epochs=int(settings.epochs),
            batch_size=int(settings.probe_batch_size),
            weight_decay=float(settings.weight_decay),
            seed=int(config.run.seed),
        )
        scores = probe.scores
        extra = {"chosen_lr": probe.lr, "sweep_val_accuracy": probe.sweep}
    result = {
        "protocol": str(settings.name),
        "metrics": classification_metrics(scores, test.labels, num_classes),
        **extra,
        "settings": as_dict(settings),
        "checkpoint": loaded.checkpoint,
        "checkpoint_step": loaded.metadata.get("step"),
        "domain": str(config.domain.name),
        "encoder": as_dict(loaded.config.encoder),
        "splits": {
            str(settings.train_split): len(train),
            str(settings.test_split): len(test),
        },
        "num_classes": num_classes,
        "feature_dim": int(train.features.shape[1]),
        "seed": int(config.run.seed),
    }
    run_dir = eval_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / EVAL_FILE, json.dumps(result, indent=2) + "\n")
    result["path"] = str(run_dir / EVAL_FILE)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A small plain-text table of the metrics, headed by what was evaluated."""
    splits = ", ".join(f"{name} {count}" for name, count in result["splits"].items())
    lines = [
        f"{result['protocol']} on {result['domain']} ({splits}); checkpoint {result['checkpoint']}",
        f"{'metric':<20}{'value':>8}",
    ]
    lines += [f"{name:<20}{value:>8.4f}" for name, value in result["metrics"].items()]
    return "\n".join(lines)
