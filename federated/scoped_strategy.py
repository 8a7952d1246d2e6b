"""Aggregation scopes as one Flower strategy: an inner strategy per group, each over its members.

The model Flower's round loop carries is every group's weights under ``<group>/<entry>`` names
(:func:`~fmcore.federated.store.flat_state`). The shared group's strategy samples the round's
sites; every domain group then takes each sampled site of its domain, so a sampled site always
gets, and sends back, all of its weights. Replies reach :meth:`ScopedAggregation.aggregate_train`
checked and decoded (:class:`~fmcore.federated.validated_strategy.ValidatedUpdates`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fmcore.federated.scopes import SHARED_GROUP
from fmcore.federated.sites import SiteInfo
from fmcore.federated.store import GlobalState, flat_state, grouped_state
from fmcore.federated.wire import (
    CONFIG_RECORD,
    METRICS_RECORD,
    as_record,
    narrowed,
    to_numpy,
    wire_rounded,
)

log = logging.getLogger("fmcore.federated")


class NodeSubset:
    """The part of a Grid a strategy samples from (Flower strategies only call get_node_ids)."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return self.node_ids


class StateRecords:
    """The global weights as Flower's one ArrayRecord and as fmcore's groups, for the wrappers of
    one federation. The last conversion is remembered: Flower hands every wrapper the record the
    previous round produced, so a round's weights are decoded from bytes at most once, not once
    per wrapper and step. Callers read the groups; they never change them in place."""

    def __init__(self) -> None:
        self._record: ArrayRecord | None = None
        self._state: GlobalState = {}

    def record_of(self, state: GlobalState) -> ArrayRecord:
        self._record, self._state = as_record(flat_state(state)), state
        return self._record

    def state_of(self, arrays: ArrayRecord) -> GlobalState:
        if arrays is not self._record:
            self._record, self._state = arrays, grouped_state(to_numpy(arrays))
        return self._state


class ScopedAggregation(Strategy):
    """Each group's weights averaged by its own strategy among the sites that hold the group.

    ``sites`` are the sites that answered the opening query; ``federation`` goes into every
    message's config; ``evaluate_round`` says after which rounds every site scores the global
    encoder (kNN on its labelled splits), averaged by the shared group's strategy; ``records``
    converts the weights (shared with the other wrappers). The sites receive the global weights
    in ``global_dtype``: with bf16 the strategies see the rounded weights the sites start from
    (their updates are then exact differences), and the rounding's residual is added back to
    the aggregate, so the float32 global keeps its precision round after round.
    """

    def __init__(
        self,
        strategies: dict[str, Strategy],
        sites: dict[int, SiteInfo],
        federation: str,
        evaluate_round: Callable[[int], bool],
        records: StateRecords,
        global_dtype: str = "fp32",
    ) -> None:
        self.records = records
        self.global_dtype = global_dtype
        self.strategies = strategies
        self.sites = sites
        self.federation = federation
        self.evaluate_round = evaluate_round
        self.current: GlobalState = {}
        self.sent: GlobalState = {}  # the current weights as the sites receive them

    def summary(self) -> None:
        for group, strategy in self.strategies.items():
            log.info("group %s:", group)
            strategy.summary()

    def _config(self) -> ConfigRecord:
        return ConfigRecord({"federation": self.federation})

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        self.current = self.records.state_of(arrays)
        self.sent = {
            group: wire_rounded(state, self.global_dtype) for group, state in self.current.items()
        }
        planned = self.strategies[SHARED_GROUP].configure_train(
            server_round,
            as_record(self.sent[SHARED_GROUP]),
            ConfigRecord({**config, **self._config()}),
            NodeSubset(self.sites),
        )
        contents = {
            message.metadata.dst_node_id: RecordDict(
                {SHARED_GROUP: message.content["arrays"], CONFIG_RECORD: message.content["config"]}
            )
            for message in planned
        }
        for group, strategy in self.strategies.items():
            members = [node for node in contents if group in self.sites[node].groups]
            if group == SHARED_GROUP or not members:
                continue
            for message in strategy.configure_train(
                server_round, as_record(self.sent[group]), self._config(), NodeSubset(members)
            ):
                content = contents[message.metadata.dst_node_id]
                content[group] = message.content["arrays"]
                for key, value in message.content["config"].items():
                    content[CONFIG_RECORD].setdefault(key, value)
        return [
            Message(
                narrowed(content, self.global_dtype),
                dst_node_id=node,
                message_type=MessageType.TRAIN,
            )
            for node, content in contents.items()
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        by_group: dict[str, list[Message]] = {}
        for reply in replies:
            for group in reply.content.array_records:
                by_group.setdefault(group, []).append(
                    Message(
                        RecordDict(
                            {
                                "arrays": reply.content[group],
                                "metrics": reply.content[METRICS_RECORD],
                            }
                        ),
                        metadata=reply.metadata,
                    )
                )
        state = dict(self.current)
        metrics: MetricRecord | None = None
        for group, group_replies in by_group.items():
            arrays, group_metrics = self.strategies[group].aggregate_train(
                server_round, group_replies
            )
            if arrays is not None:  # strategies may compute in float64 (FedAdam): keep dtypes
                state[group] = {
                    key: self._with_residual(group, key, array.numpy())
                    for key, array in arrays.items()
                }
            if group == SHARED_GROUP:
                metrics = group_metrics
        return self.records.record_of(state), metrics

    def _with_residual(self, group: str, key: str, aggregated: np.ndarray) -> np.ndarray:
        """``aggregated`` plus what rounding the global weights for the wire took off them."""
        current, sent = self.current[group][key], self.sent[group][key]
        if current is not sent:
            aggregated = aggregated + (current.astype(np.float64) - sent)
        return aggregated.astype(current.dtype, copy=False)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        if not self.evaluate_round(server_round):
            return []
        state = self.records.state_of(arrays)
        return [
            Message(
                narrowed(
                    RecordDict(
                        {
                            **{group: as_record(state[group]) for group in site.groups},
                            CONFIG_RECORD: self._config(),
                        }
                    ),
                    self.global_dtype,
                ),
                dst_node_id=node,
                message_type=MessageType.EVALUATE,
            )
            for node, site in self.sites.items()
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        usable = [reply for reply in replies if not reply.has_error()]
        if not usable:
            return None
        return self.strategies[SHARED_GROUP].aggregate_evaluate(server_round, usable)
