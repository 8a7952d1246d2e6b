"""A round's outcome made known: a completed round's rounds.jsonl line, the round-end hook and
one line on stdout; a failed round counted, so too many in a row stop the federation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fmcore.errors import FmcoreError
from fmcore.federated.federation_config import FederatedSection, federated_section
from fmcore.federated.store import ROUNDS_LOG, RoundStore
from fmcore.plugin_manager import Registry


def publish_round(
    store: RoundStore, registry: Registry, config: DictConfig, record: dict[str, Any]
) -> None:
    """A completed round (its file already saved): a rounds.jsonl line, the round-end hook and
    one line on stdout. ``record`` holds round, contributors, wall_seconds, metrics, checkpoint;
    ``config`` is the federation's."""
    rounds = federated_section(config).rounds
    store.log(record)
    metrics = record["metrics"]
    registry.hook.fmcore_federated_round_end(
        server_round=record["round"],
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        checkpoint=Path(record["checkpoint"]),
        run_dir=store.run_dir,
        config=config,
    )
    how = "securely " if record.get("secure_aggregation") else ""
    print(
        f"round {record['round']}/{rounds}: {record['contributors']} site(s) aggregated {how}"
        f"(loss {metrics.get('loss', float('nan')):.4f}), {record['wall_seconds']:.1f} s;"
        f" {record['checkpoint']}",
        flush=True,
    )


class FailedRounds:
    """Rounds with fewer than ``federated.min_sites`` usable updates keep the model and count
    toward ``federated.rounds``; ``federated.max_failed_rounds`` of them in a row stop the
    federation, the plain and the secure server alike."""

    def __init__(self, store: RoundStore, settings: FederatedSection) -> None:
        self.store = store
        self.max_failed = settings.max_failed_rounds
        self.min_sites = settings.min_sites
        self.in_a_row = 0

    def aggregated(self) -> None:
        self.in_a_row = 0

    def failed(self, record: dict[str, Any]) -> None:
        """Log the round (without a checkpoint); raise once too many failed in a row."""
        self.store.log({**record, "checkpoint": None})
        self.in_a_row += 1
        if self.in_a_row >= self.max_failed:
            raise FmcoreError(
                f"{self.in_a_row} rounds in a row (up to round {record['round']}) got fewer"
                f" than federated.min_sites={self.min_sites} usable updates"
                f" (federated.max_failed_rounds); the sites' failures are in"
                f" {self.store.run_dir / ROUNDS_LOG}"
            )
