"""A completed round made known: its rounds.jsonl line, the round-end hook, one line on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmcore.federated.store import RoundStore
from fmcore.plugin_manager import Registry


def publish_round(
    store: RoundStore, registry: Registry, rounds: int, record: dict[str, Any]
) -> None:
    """A completed round (its file already saved): a rounds.jsonl line, the round-end hook and
    one line on stdout. ``record`` holds round, contributors, wall_seconds, metrics, checkpoint."""
    store.log(record)
    metrics = record["metrics"]
    registry.hook.fmcore_federated_round_end(
        server_round=record["round"],
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        checkpoint=Path(record["checkpoint"]),
    )
    how = "securely " if record.get("secure_aggregation") else ""
    print(
        f"round {record['round']}/{rounds}: {record['contributors']} site(s) aggregated {how}"
        f"(loss {metrics.get('loss', float('nan')):.4f}), {record['wall_seconds']:.1f} s;"
        f" {record['checkpoint']}",
        flush=True,
    )
