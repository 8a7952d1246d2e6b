"""Update validation as a Flower strategy wrapper: the wrapped strategy sees only usable updates.

A site's training reply is usable when it trained at least one step on at least one sample, its
loss is finite, it sent exactly its groups, and every group matches the global model's entries,
shapes and kinds with finite values (:func:`~fmcore.federated.updates.update_problem`). Updates
travel in ``federated.update_dtype`` and are widened to float32 here. A round with fewer than
``min_sites`` usable updates is not aggregated: the global model stays as it was (Flower's rule
for a strategy that returns no arrays).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fmcore.errors import ConfigError
from fmcore.federated.scoped_strategy import StateRecords
from fmcore.federated.sites import SiteInfo
from fmcore.federated.store import GlobalState
from fmcore.federated.strategies import StrategyWrapper
from fmcore.federated.updates import update_problem
from fmcore.federated.wire import (
    METRICS_RECORD,
    SITE_RECORD,
    as_record,
    check_wire_dtype,
    record_bytes,
    to_numpy,
)

log = logging.getLogger("fmcore.federated")
UPDATE_METRICS = ("num-examples", "loss", "train-seconds", "local-steps")


@dataclass
class RoundReplies:
    """What the sites sent back in one round, for rounds.jsonl."""

    contributors: int = 0
    failures: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    bytes_up: dict[str, int] = field(default_factory=dict)
    site_train_seconds: dict[str, float] = field(default_factory=dict)
    site_examples: dict[str, int] = field(default_factory=dict)


class ValidatedUpdates(StrategyWrapper):
    """Checks every training reply before ``inner`` aggregates; :attr:`replies` tells the round."""

    def __init__(
        self,
        inner: Strategy,
        sites: dict[int, SiteInfo],
        min_sites: int,
        timeout: float,
        records: StateRecords,
    ) -> None:
        super().__init__(inner)
        self.records = records
        self.sites = sites
        self.min_sites = min_sites
        self.timeout = timeout
        self.expected: GlobalState = {}
        self.asked: set[int] = set()
        self.replies = RoundReplies()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        self.expected = self.records.state_of(arrays)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.asked = {message.metadata.dst_node_id for message in messages}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.replies = report = RoundReplies()
        accepted: list[Message] = []
        answered: set[int] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            name = self.sites[node].name if node in self.sites else f"node {node}"
            if reply.has_error():
                report.failures.append(f"{name}: {reply.error.reason}")
                log.warning("site %s failed this round: %s", name, reply.error.reason)
                continue
            report.bytes_up[name] = content_bytes(reply.content)
            try:
                decoded, metrics = decode_update(reply.content)
                problem = self._problem(decoded, metrics, self.sites.get(node))
            except (KeyError, TypeError, ValueError, ConfigError) as error:
                problem = f"malformed reply: {error}"
            if problem is not None:
                report.rejected.append(f"{name}: {problem}")
                log.warning("rejected the update of site %s: %s", name, problem)
                continue
            report.site_train_seconds[name] = metrics["train-seconds"]
            report.site_examples[name] = int(metrics["num-examples"])
            content = RecordDict(
                {
                    group: _aggregable(reply.content[group], entries)
                    for group, entries in decoded.items()
                }
            )
            del decoded  # a model-sized copy per site: gone before the next reply is decoded
            content[METRICS_RECORD] = MetricRecord(metrics)
            accepted.append(Message(content, metadata=reply.metadata))
        for node in sorted(self.asked - answered):
            report.failures.append(f"{self.sites[node].name}: no reply within {self.timeout:.0f} s")
        report.contributors = len(accepted)
        if len(accepted) < self.min_sites:
            log.warning(
                "round %d: %d usable update(s), fewer than federated.min_sites=%d;"
                " the global model is unchanged",
                server_round,
                len(accepted),
                self.min_sites,
            )
            return None, None
        return self.inner.aggregate_train(server_round, accepted)

    def _problem(
        self,
        decoded: dict[str, dict[str, np.ndarray]],
        metrics: dict[str, float],
        site: SiteInfo | None,
    ) -> str | None:
        if site is None:
            return "the node did not take part in the site query"
        if metrics["local-steps"] < 1 or metrics["num-examples"] < 1:
            return (
                f"trained {metrics['local-steps']:g} steps on {metrics['num-examples']:g} samples"
            )
        if not math.isfinite(metrics["loss"]):
            return f"its training loss is {metrics['loss']}"
        if set(decoded) != set(site.groups):
            return f"sent groups {sorted(decoded)}, expected {sorted(site.groups)}"
        for group, entries in decoded.items():
            problem = update_problem(entries, self.expected[group])
            if problem is not None:
                return f"{group}: {problem}"
        return None


def decode_update(content: RecordDict) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """A training reply's weights per group (float32) and its metrics, by the fixed names."""
    dtype = check_wire_dtype(str(content[SITE_RECORD]["update-dtype"]))
    received = content[METRICS_RECORD]
    metrics = {key: float(received[key]) for key in UPDATE_METRICS}
    groups = {group: to_numpy(content[group], dtype) for group in content.array_records}
    return groups, metrics


def _aggregable(received: ArrayRecord, decoded: dict[str, np.ndarray]) -> ArrayRecord:
    """What the strategies aggregate: the received record itself when it already holds the
    decoded arrays in sorted order (float32 updates; no second model-sized copy per site), else
    the decoded (widened) arrays."""
    same = all(received[key].dtype == str(value.dtype) for key, value in decoded.items())
    return received if same and list(received) == sorted(decoded) else as_record(decoded)


def content_bytes(content: RecordDict) -> int:
    return sum(record_bytes(record) for record in content.array_records.values())
