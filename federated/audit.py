"""What a site sends, written down: one JSON line per outgoing message in the site's state dir.

A hospital's privacy officer can read ``outgoing.jsonl`` to see that only weights (names, shapes,
dtypes), metrics and configuration values leave the site (``federated.audit=true``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

AUDIT_FILE = "outgoing.jsonl"


def describe(content: RecordDict) -> dict[str, Any]:
    """Every record of a message: arrays by name, shape, dtype and bytes; metrics and config
    values as sent."""
    records: dict[str, Any] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            records[name] = {
                "type": "arrays",
                "entries": {
                    key: {
                        "dtype": array.dtype,
                        "shape": list(array.shape),
                        "bytes": len(array.data),
                    }
                    for key, array in record.items()
                },
            }
        elif isinstance(record, MetricRecord | ConfigRecord):
            kind = "metrics" if isinstance(record, MetricRecord) else "config"
            records[name] = {"type": kind, "values": _plain(dict(record))}
        else:
            records[name] = {"type": type(record).__name__}
    return records


def append_audit(state_dir: Path, message_type: str, content: RecordDict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    line = {"time": time.time(), "message_type": message_type, "records": describe(content)}
    with open(state_dir / AUDIT_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value.decode("latin-1") if isinstance(value, bytes) else value
        for key, value in values.items()
    }
