"""The server's side of a federation: meet the sites, then per round send, check, aggregate, save.

Each aggregation group (see :mod:`.scopes`) has its own instance of the configured Flower
strategy; the shared group's strategy samples the round's sites and every domain group aggregates
only the sampled sites of its domain.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from fmcore.errors import ConfigError, FmcoreError
from fmcore.federated.scopes import SHARED_GROUP
from fmcore.federated.sites import SiteInfo, failed_reply, open_federation
from fmcore.federated.store import ROUNDS_LOG, GlobalState, RoundStore
from fmcore.federated.strategies import make_strategy
from fmcore.federated.updates import update_problem
from fmcore.federated.wire import (
    CONFIG_RECORD,
    METRICS_RECORD,
    SITE_RECORD,
    as_record,
    check_wire_dtype,
    record_bytes,
    to_numpy,
)
from fmcore.plugin_manager import Registry

log = logging.getLogger("fmcore.federated")
UPDATE_METRICS = ("num-examples", "loss", "train-seconds", "local-steps")


class NodeSubset:
    """The part of a Grid a strategy samples from (Flower strategies only call get_node_ids)."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return self.node_ids


class Federation:
    """The server loop of one federation (simulated or deployed)."""

    def __init__(self, grid: Grid, config: DictConfig, run_dir: Path, registry: Registry) -> None:
        self.grid = grid
        self.config = config
        self.settings = config.federated
        self.run_dir = run_dir
        self.registry = registry
        self.store = RoundStore(run_dir)
        self.timeout = float(self.settings.round_timeout)
        self.min_sites = int(self.settings.min_sites)

    def run(self) -> int:
        """Run the remaining rounds; returns the last completed round."""
        if int(self.settings.evaluate_every) and self.config.get("eval", {}).get("name") != "knn":
            raise ConfigError(
                f"federated.evaluate_every={self.settings.evaluate_every} scores the global"
                " model with kNN at every site: add eval=knn (its settings, such as eval.k,"
                " may then be overridden)"
            )
        opened = open_federation(
            self.grid,
            self.config,
            self.run_dir,
            self.store,
            self.min_sites,
            f"federated.min_sites={self.min_sites}",
        )
        self.federation, sites = opened.federation, opened.sites
        last, state = opened.last_round, opened.state
        # The shared group's strategy samples the round's sites; each domain group then takes
        # every sampled site of its domain, so a sampled site always gets all of its weights.
        strategies = {
            group: make_strategy(
                self.settings,
                sites=sum(group in site.groups for site in sites.values()),
                min_sites=self.min_sites if group == SHARED_GROUP else 1,
                fraction=float(self.settings.fraction) if group == SHARED_GROUP else 1.0,
            )
            for group in state
        }
        server_round, failed = last + 1, 0
        while server_round <= int(self.settings.rounds):
            if self.round(server_round, state, strategies, sites):
                last, server_round, failed = server_round, server_round + 1, 0
                continue
            failed += 1
            if failed >= int(self.settings.max_failed_rounds):
                raise FmcoreError(
                    f"round {server_round} got fewer than federated.min_sites={self.min_sites}"
                    f" usable updates {failed} times in a row (federated.max_failed_rounds);"
                    f" the sites' failures are in {self.store.run_dir / ROUNDS_LOG}"
                )
        return last

    def round(
        self,
        server_round: int,
        state: GlobalState,
        strategies: dict[str, Strategy],
        sites: dict[int, SiteInfo],
    ) -> bool:
        """One round; False (nothing saved, logged as failed) without enough usable updates."""
        started = time.perf_counter()
        contents = self._configure(server_round, state, strategies, sites)
        messages = [
            Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
            for node, content in contents.items()
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        accepted, record = self._check(replies, state, sites, set(contents))
        contributors = len(accepted.get(SHARED_GROUP, []))
        record.update(
            round=server_round,
            contributors=contributors,
            bytes_down={sites[n].name: record_bytes_of(contents[n]) for n in contents},
        )
        if contributors < self.min_sites:
            record.update(wall_seconds=time.perf_counter() - started, checkpoint=None)
            self.store.log(record)
            log.warning(
                "round %d: %d usable update(s), fewer than federated.min_sites=%d; retrying",
                server_round,
                contributors,
                self.min_sites,
            )
            return False
        aggregated: dict[str, Any] = {}
        for group, group_replies in accepted.items():
            arrays, metrics = strategies[group].aggregate_train(server_round, group_replies)
            if arrays is not None:  # strategies may compute in float64 (FedAdam): keep dtypes
                state[group] = {
                    key: array.numpy().astype(state[group][key].dtype, copy=False)
                    for key, array in arrays.items()
                }
            if group == SHARED_GROUP and metrics is not None:
                aggregated = dict(metrics)
        checkpoint = self.store.save(server_round, state)
        every = int(self.settings.evaluate_every)
        if every and (server_round % every == 0 or server_round == int(self.settings.rounds)):
            record["evaluation"] = self._evaluate(server_round, state, strategies, sites)
            aggregated.update(
                {f"eval/knn_{k}": v for k, v in record["evaluation"]["metrics"].items()}
            )
        record.update(
            wall_seconds=time.perf_counter() - started,
            metrics=aggregated,
            checkpoint=str(checkpoint),
        )
        publish_round(self.store, self.registry, int(self.settings.rounds), record)
        return True

    def _evaluate(
        self,
        server_round: int,
        state: GlobalState,
        strategies: dict[str, Strategy],
        sites: dict[int, SiteInfo],
    ) -> dict[str, Any]:
        """Every site scores the new global encoder with kNN on its own labelled splits; the
        metrics are averaged by the sites' test-sample counts."""
        messages = [
            Message(
                RecordDict(
                    {
                        **{group: as_record(state[group]) for group in site.groups},
                        CONFIG_RECORD: ConfigRecord({"federation": self.federation}),
                    }
                ),
                dst_node_id=node,
                message_type=MessageType.EVALUATE,
            )
            for node, site in sites.items()
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        usable = [reply for reply in replies if not failed_reply(reply)]
        aggregated = strategies[SHARED_GROUP].aggregate_evaluate(server_round, usable)
        return {
            "metrics": dict(aggregated or {}),
            "sites": {
                sites[r.metadata.src_node_id].name: dict(r.content[METRICS_RECORD]) for r in usable
            },
            "failures": sorted(
                sites[r.metadata.src_node_id].name for r in replies if r.has_error()
            ),
        }

    def _configure(
        self,
        server_round: int,
        state: GlobalState,
        strategies: dict[str, Strategy],
        sites: dict[int, SiteInfo],
    ) -> dict[int, RecordDict]:
        """One message content per sampled site: its groups' global weights and the config."""

        def config() -> ConfigRecord:
            return ConfigRecord({"federation": self.federation})

        planned = strategies[SHARED_GROUP].configure_train(
            server_round, as_record(state[SHARED_GROUP]), config(), NodeSubset(sites)
        )
        contents = {
            message.metadata.dst_node_id: RecordDict(
                {SHARED_GROUP: message.content["arrays"], CONFIG_RECORD: message.content["config"]}
            )
            for message in planned
        }
        for group, strategy in strategies.items():
            members = [node for node in contents if group in sites[node].groups]
            if group == SHARED_GROUP or not members:
                continue
            for message in strategy.configure_train(
                server_round, as_record(state[group]), config(), NodeSubset(members)
            ):
                content = contents[message.metadata.dst_node_id]
                content[group] = message.content["arrays"]
                for key, value in message.content["config"].items():
                    content[CONFIG_RECORD].setdefault(key, value)
        return contents

    def _check(
        self,
        replies: list[Message],
        state: GlobalState,
        sites: dict[int, SiteInfo],
        asked: set[int],
    ) -> tuple[dict[str, list[Message]], dict[str, Any]]:
        """Split usable replies by group; record failures, rejections, bytes and site timings."""
        accepted: dict[str, list[Message]] = {}
        failures: list[str] = []
        rejected: list[str] = []
        bytes_up: dict[str, int] = {}
        site_seconds: dict[str, float] = {}
        site_examples: dict[str, int] = {}
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            name = sites[node].name if node in sites else f"node {node}"
            if reply.has_error():
                failures.append(f"{name}: {reply.error.reason}")
                log.warning("site %s failed this round: %s", name, reply.error.reason)
                continue
            content = reply.content
            bytes_up[name] = record_bytes_of(content)
            try:
                decoded, metrics = decode_update(content)
                problem = self._problem(decoded, metrics, state, sites.get(node))
            except (KeyError, TypeError, ValueError, ConfigError) as error:
                problem = f"malformed reply: {error}"
            if problem is not None:
                rejected.append(f"{name}: {problem}")
                log.warning("rejected the update of site %s: %s", name, problem)
                continue
            site_seconds[name] = metrics["train-seconds"]
            site_examples[name] = int(metrics["num-examples"])
            if self.settings.dp.clipping is not None:
                # DP's noise is calibrated for a plain mean: every site weighs the same.
                metrics = {**metrics, "num-examples": 1}
            for group, entries in decoded.items():
                accepted.setdefault(group, []).append(
                    Message(
                        content=RecordDict(
                            {"arrays": as_record(entries), "metrics": MetricRecord(metrics)}
                        ),
                        metadata=reply.metadata,
                    )
                )
        for node in sorted(asked - answered):
            failures.append(f"{sites[node].name}: no reply within {self.timeout:.0f} s")
        record = {
            "failures": failures,
            "rejected": rejected,
            "bytes_up": bytes_up,
            "site_train_seconds": site_seconds,
            "site_examples": site_examples,
        }
        return accepted, record

    @staticmethod
    def _problem(
        decoded: dict[str, dict[str, np.ndarray]],
        metrics: dict[str, float],
        state: GlobalState,
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
            problem = update_problem(entries, state[group])
            if problem is not None:
                return f"{group}: {problem}"
        return None


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


def decode_update(content: RecordDict) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """A training reply's weights per group (float32) and its metrics, by the fixed names."""
    dtype = check_wire_dtype(str(content[SITE_RECORD]["update-dtype"]))
    received = content[METRICS_RECORD]
    metrics = {key: float(received[key]) for key in UPDATE_METRICS}
    groups = {group: to_numpy(content[group], dtype) for group in content.array_records}
    return groups, metrics


def record_bytes_of(content: RecordDict) -> int:
    return sum(record_bytes(record) for record in content.array_records.values())
