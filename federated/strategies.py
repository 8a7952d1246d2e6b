"""Flower's own aggregation strategies, chosen and configured by the ``federated`` config, and
the base of fmcore's wrappers around them (composed as Flower's DP wrappers are)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flower

from fmcore.errors import ConfigError
from fmcore.federated.federation_config import FederatedSection

STRATEGIES: dict[str, type[flower.Strategy]] = {
    "FedAvg": flower.FedAvg,
    "FedProx": flower.FedProx,
    "FedAdam": flower.FedAdam,
    "FedYogi": flower.FedYogi,
    "FedAdagrad": flower.FedAdagrad,
    "FedAvgM": flower.FedAvgM,
    "FedMedian": flower.FedMedian,
    "FedTrimmedAvg": flower.FedTrimmedAvg,
    "Krum": flower.Krum,
    "MultiKrum": flower.MultiKrum,
    "Bulyan": flower.Bulyan,
}
DP_WRAPPERS: dict[str, type[flower.Strategy]] = {
    "fixed": flower.DifferentialPrivacyServerSideFixedClipping,
    "adaptive": flower.DifferentialPrivacyServerSideAdaptiveClipping,
}


def make_strategy(
    settings: FederatedSection, sites: int, min_sites: int, fraction: float
) -> flower.Strategy:
    """One aggregation group's strategy: ``federated.strategy`` with ``federated.strategy_args``,
    sampling ``fraction`` of the group's ``sites`` (at least ``min_sites``), wrapped in
    server-side differential privacy when ``federated.dp.clipping`` is set."""
    name = settings.strategy
    if name not in STRATEGIES:
        raise ConfigError(
            f"federated.strategy={name} is unknown; choose one of {', '.join(STRATEGIES)}"
        )
    args: dict[str, Any] = dict(settings.strategy_args)
    args.update(
        fraction_train=fraction,
        fraction_evaluate=0.0,
        min_train_nodes=min_sites,
        min_evaluate_nodes=0,
        min_available_nodes=min_sites,
    )
    try:
        strategy = STRATEGIES[name](**args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"federated.strategy_args do not fit {name}: {error}") from error
    dp = settings.dp
    if dp.clipping is None:
        return strategy
    if dp.clipping not in DP_WRAPPERS:
        raise ConfigError(
            f"federated.dp.clipping={dp.clipping}: choose {' or '.join(DP_WRAPPERS)}, or null"
        )
    try:
        private = DP_WRAPPERS[dp.clipping](
            strategy,
            noise_multiplier=dp.noise_multiplier,
            num_sampled_clients=max(int(fraction * sites), min_sites),  # as Flower samples
            **dp.args,
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"federated.dp does not fit {dp.clipping} clipping: {error}") from error
    return EqualWeights(private)


class StrategyWrapper(flower.Strategy):
    """A strategy that hands every step to the one it wraps; subclasses override some."""

    def __init__(self, inner: flower.Strategy) -> None:
        self.inner = inner

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


class EqualWeights(StrategyWrapper):
    """Every update weighs the same: server-side DP calibrates its noise for a plain mean."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        equal = [
            Message(
                RecordDict(
                    {
                        "arrays": reply.content["arrays"],
                        "metrics": MetricRecord({**reply.content["metrics"], "num-examples": 1}),
                    }
                ),
                metadata=reply.metadata,
            )
            for reply in replies
        ]
        return self.inner.aggregate_train(server_round, equal)
