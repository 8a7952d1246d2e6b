"""The server's side of a federation: meet the sites, then Flower's ``Strategy.start`` runs the
rounds through fmcore's strategies, composed as Flower's DP wrappers compose::

    RecordedRounds(ValidatedUpdates(ScopedAggregation({group: make_strategy(...)})))

:class:`~.scoped_strategy.ScopedAggregation` averages each aggregation group (see :mod:`.scopes`)
with its own instance of the configured Flower strategy, :class:`~.validated_strategy.
ValidatedUpdates` lets only usable updates through, and :class:`RecordedRounds` numbers, saves
(with the server optimizer's state, :mod:`.server_optimizer`), logs and publishes the rounds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from fmcore.errors import ConfigError
from fmcore.federated.federation_config import federated_section
from fmcore.federated.publish import FailedRounds, publish_round
from fmcore.federated.scoped_strategy import ScopedAggregation, StateRecords
from fmcore.federated.scopes import SHARED_GROUP
from fmcore.federated.server_optimizer import (
    keeps_state,
    optimizer_state,
    restore_optimizer_state,
)
from fmcore.federated.sites import open_federation
from fmcore.federated.store import RoundStore
from fmcore.federated.strategies import StrategyWrapper, make_strategy
from fmcore.federated.validated_strategy import ValidatedUpdates, content_bytes
from fmcore.federated.wire import METRICS_RECORD
from fmcore.plugin_manager import Registry

log = logging.getLogger("fmcore.federated")


class Federation:
    """The server of one federation (simulated or deployed)."""

    def __init__(self, grid: Grid, config: DictConfig, run_dir: Path, registry: Registry) -> None:
        self.grid = grid
        self.config = config
        self.settings = federated_section(config)
        self.run_dir = run_dir
        self.registry = registry
        self.store = RoundStore(run_dir)
        self.timeout = self.settings.round_timeout
        self.min_sites = self.settings.min_sites

    def run(self) -> int:
        """Run the remaining rounds; returns the last completed round."""
        if self.settings.evaluate_every and self.config.get("eval", {}).get("name") != "knn":
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
        sites, last, state = opened.sites, opened.last_round, opened.state
        remaining = self.settings.rounds - last
        if remaining <= 0:
            return last
        records = StateRecords()
        scoped = ScopedAggregation(
            {
                group: make_strategy(
                    self.settings,
                    sites=sum(group in site.groups for site in sites.values()),
                    min_sites=self.min_sites if group == SHARED_GROUP else 1,
                    fraction=self.settings.fraction if group == SHARED_GROUP else 1.0,
                )
                for group in state
            },
            sites,
            opened.federation,
            self._evaluates,
            records,
            self.settings.global_dtype,
        )
        if last:
            saved = self.store.optimizer(last)
            if not saved and any(map(keeps_state, scoped.strategies.values())):
                log.warning(
                    "round %d has no saved server optimizer state (written from this fmcore on):"
                    " %s's moments start from zero",
                    last,
                    self.settings.strategy,
                )
            restore_optimizer_state(scoped.strategies, saved)
        rounds = RecordedRounds(
            ValidatedUpdates(scoped, sites, self.min_sites, self.timeout, records),
            self.store,
            self.registry,
            self.config,
            first_round=last + 1,
            records=records,
            strategies=scoped.strategies,
        )
        rounds.start(
            self.grid,
            records.record_of(state),
            num_rounds=remaining,
            timeout=self.timeout,
            evaluate_fn=rounds.finish_round,
        )
        return rounds.last_round

    def _evaluates(self, server_round: int) -> bool:
        """Whether every site scores the global encoder after this round."""
        every, last = self.settings.evaluate_every, self.settings.rounds
        return bool(every) and (server_round % every == 0 or server_round == last)


class RecordedRounds(StrategyWrapper):
    """The outermost wrapper: fmcore's round numbers (continuing after the last complete round),
    every aggregated round saved, logged and published, and the federation stopped once
    ``federated.max_failed_rounds`` rounds in a row had too few usable updates."""

    def __init__(
        self,
        inner: ValidatedUpdates,
        store: RoundStore,
        registry: Registry,
        config: DictConfig,
        first_round: int,
        records: StateRecords,
        strategies: Mapping[str, Strategy],
    ) -> None:
        super().__init__(inner)
        self.config = config
        self.records = records
        self.strategies = strategies  # the groups' own, whose optimizer state is saved
        self.updates = inner
        self.store = store
        self.registry = registry
        self.failures = FailedRounds(store, federated_section(config))
        self.offset = first_round - 1
        self.last_round = first_round - 1
        self.started = time.perf_counter()
        self.record: dict[str, Any] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        self.started = time.perf_counter()
        messages = list(
            self.inner.configure_train(self.offset + server_round, arrays, config, grid)
        )
        sites = self.updates.sites
        self.record = {
            "round": self.offset + server_round,
            "bytes_down": {
                sites[m.metadata.dst_node_id].name: content_bytes(m.content) for m in messages
            },
        }
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        number = self.offset + server_round
        arrays, metrics = self.inner.aggregate_train(number, replies)
        self.record.update(asdict(self.updates.replies))
        if arrays is None:
            self.record.update(wall_seconds=time.perf_counter() - self.started, checkpoint=None)
            self.failures.failed(self.record)
            return None, None
        self.failures.aggregated()
        saved = self.store.save(
            number, self.records.state_of(arrays), optimizer_state(self.strategies)
        )
        self.record["checkpoint"] = str(saved)
        self.record["metrics"] = dict(metrics or {})
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.record.get("checkpoint") is None:  # the round failed: nothing new to score
            return []
        return self.inner.configure_evaluate(self.offset + server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        if not replies:
            return None
        metrics = self.inner.aggregate_evaluate(self.offset + server_round, replies)
        sites = self.updates.sites
        usable = [reply for reply in replies if not reply.has_error()]
        self.record["evaluation"] = {
            "metrics": dict(metrics or {}),
            "sites": {
                sites[r.metadata.src_node_id].name: dict(r.content[METRICS_RECORD]) for r in usable
            },
            "failures": sorted(
                sites[r.metadata.src_node_id].name for r in replies if r.has_error()
            ),
        }
        self.record["metrics"].update(
            {f"eval/knn_{k}": v for k, v in self.record["evaluation"]["metrics"].items()}
        )
        return metrics

    def finish_round(self, server_round: int, arrays: ArrayRecord) -> None:
        """Flower's evaluate_fn, called after every round (and with round 0 before the first):
        an aggregated round is published."""
        if server_round == 0 or self.record.get("checkpoint") is None:
            return None
        self.record["wall_seconds"] = time.perf_counter() - self.started
        publish_round(self.store, self.registry, self.config, self.record)
        self.last_round = int(self.record["round"])
        return None
