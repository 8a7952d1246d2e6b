"""Secure aggregation with Flower's SecAgg+, the server's half: the server learns only the sites'
weighted average.

SecAgg+ exists only in Flower's legacy API, so this is a server path of its own: a legacy
``flwr.server.strategy.FedAvg`` driven by ``SecAggPlusWorkflow`` inside ``DefaultWorkflow``. It
meets the sites with the same query as :class:`~fmcore.federated.server.Federation` and writes the
same round files and ``rounds.jsonl``. SecAgg+ sums one flat vector across all sites, so every
site must hold the same groups: one domain (``shared`` plus one ``domain:<domain>:<modality>``).
The sites' half is :mod:`.secure_client`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common import (
    FitRes,
    Metrics,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from omegaconf import DictConfig

from fmcore.errors import ConfigError
from fmcore.federated.federation_config import FederatedSection, federated_section
from fmcore.federated.publish import FailedRounds, publish_round
from fmcore.federated.secure_layout import (
    CLIPPING_RANGE,
    FEDERATION,
    LAYOUT,
    MAX_WEIGHT,
    NUM_EXAMPLES,
    SERVER_ROUND,
    flatten,
    layout_of,
    unflatten,
)
from fmcore.federated.sites import SiteInfo, open_federation
from fmcore.federated.store import GlobalState, RoundStore
from fmcore.plugin_manager import Registry

log = logging.getLogger("fmcore.federated")


def secure_aggregation_on(config: DictConfig) -> bool:
    return federated_section(config).secure_aggregation


def make_workflow(settings: FederatedSection) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow with ``federated.secagg``; each stage waits up to
    ``federated.round_timeout`` seconds for the sites."""
    secagg = settings.secagg
    try:
        return SecAggPlusWorkflow(
            num_shares=secagg.num_shares,
            reconstruction_threshold=secagg.reconstruction_threshold,
            max_weight=secagg.max_weight,
            clipping_range=secagg.clipping_range,
            quantization_range=secagg.quantization_range,
            timeout=settings.round_timeout,
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"federated.secagg does not fit SecAgg+: {error}") from error


def check_secure_config(config: DictConfig) -> None:
    """Refuse, before any site is contacted, what secure aggregation cannot honour."""
    settings = federated_section(config)
    if settings.strategy != "FedAvg":
        raise ConfigError(
            f"federated.secure_aggregation=true averages with FedAvg only (SecAgg+ reveals only"
            f" the weighted sum), not federated.strategy={settings.strategy}: use federated=fedavg"
        )
    if settings.dp.clipping is not None:
        raise ConfigError(
            "federated.dp (server-side clipping) needs each site's update, which SecAgg+ hides:"
            " set federated.dp.clipping=null with federated.secure_aggregation=true"
        )
    if settings.sites < 2:
        raise ConfigError("federated.secure_aggregation=true needs federated.sites >= 2")
    if settings.global_dtype != "fp32":
        raise ConfigError(
            "federated.global_dtype=bf16 is not used by secure aggregation's rounds: set"
            " federated.global_dtype=fp32 with federated.secure_aggregation=true"
        )
    own = str(config.domain.name)
    domains = {own if d is None else d for d in settings.site_domains or [None]}
    if len(domains) > 1:
        raise _mixed(sorted(domains))
    make_workflow(settings)


def _mixed(what: list[str]) -> ConfigError:
    return ConfigError(
        "federated.secure_aggregation=true needs every site in one domain, not "
        f"{', '.join(what)}: SecAgg+ sums one flat vector across all sites, so sites of"
        " different domains (whose tokenizers and heads are averaged only among their own"
        " domain) cannot be aggregated securely; run one federation per domain, or turn it off"
    )


def check_single_domain(sites: dict[int, SiteInfo]) -> None:
    """Every site must send the same groups: ``shared`` and one domain group."""
    groups = {site.groups for site in sites.values()}
    if len(groups) > 1:
        raise _mixed(sorted({g for site in groups for g in site if g.startswith("domain:")}))


def weighted_metrics(pairs: list[tuple[int, Metrics]]) -> Metrics:
    """The sites' numeric metrics averaged by their sample counts."""
    total = sum(n for n, _ in pairs)
    if not total:
        return {}
    keys = {k for _, m in pairs for k, v in m.items() if isinstance(v, int | float)}
    return {
        key: sum(n * float(m[key]) for n, m in pairs if key in m) / total
        for key in sorted(keys - {NUM_EXAMPLES})
    }


def failure_reason(failure: tuple[ClientProxy, FitRes] | BaseException) -> str:
    """What went wrong: the workflow wraps a failed reply's ``Error`` in an Exception."""
    if not isinstance(failure, BaseException):
        return failure[1].status.message
    error = failure.args[0] if failure.args else failure
    return str(getattr(error, "reason", error))


class SecureFedAvg(FedAvg):
    """Legacy FedAvg over the SecAgg+ aggregate that saves and logs every round.

    SecAggPlusWorkflow calls ``configure_fit``, then ``aggregate_fit`` (every result carries the
    same securely averaged vector); DefaultWorkflow then calls ``evaluate`` with the round's
    global weights, where the round is written (or counted as failed, as the plain server does).
    """

    def __init__(
        self,
        server: SecureFederation,
        state: GlobalState,
        first_round: int,
        sites: dict[int, SiteInfo],
    ) -> None:
        self.server = server
        self.layout = layout_of(state)
        self.dtypes = {(g, k): state[g][k].dtype for g, k in self.layout}
        self.offset = first_round - 1
        self.sites = sites
        settings = server.settings
        fit_config: dict[str, Scalar] = {
            FEDERATION: server.federation,
            LAYOUT: json.dumps(self.layout),
            CLIPPING_RANGE: settings.secagg.clipping_range,
            MAX_WEIGHT: settings.secagg.max_weight,
        }
        minimum = max(2, server.min_sites)
        super().__init__(
            fraction_fit=settings.fraction,
            fraction_evaluate=0.0,
            min_fit_clients=minimum,
            min_evaluate_clients=0,
            min_available_clients=minimum,
            on_fit_config_fn=lambda r: {**fit_config, SERVER_ROUND: self.offset + r},
            initial_parameters=ndarrays_to_parameters(flatten(self.layout, state)),
            fit_metrics_aggregation_fn=weighted_metrics,
        )
        self._begin()

    def _begin(self) -> None:
        self.started = time.perf_counter()
        self.sampled: list[int] = []
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.errors: list[str] = []
        self.metrics: dict[str, Scalar] = {}
        self.aggregated = False

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        self._begin()
        planned = [
            (proxy, fitins)
            for proxy, fitins in super().configure_fit(server_round, parameters, client_manager)
            if proxy.node_id in self.sites  # only sites that answered the query
        ]
        self.sampled = [proxy.node_id for proxy, _ in planned]
        return planned

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.results = results
        self.errors = list(dict.fromkeys(map(failure_reason, failures)))  # SecAgg+ adds twice
        if len(results) < self.server.min_sites:
            log.warning(
                "round %d: %d masked update(s), fewer than federated.min_sites=%d;"
                " the global model is unchanged",
                self.offset + server_round,
                len(results),
                self.server.min_sites,
            )
            return None, {}
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        self.metrics = dict(metrics)
        self.aggregated = True
        return parameters, metrics

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        if server_round == 0:  # the initial weights, before any round
            return None
        if not self.aggregated:
            self.server.failures.failed({"round": self.offset + server_round, **self._record()})
            return None
        self.server.failures.aggregated()
        state = unflatten(self.layout, parameters_to_ndarrays(parameters))
        for group, key in self.layout:  # SecAgg+ dequantizes to float64
            state[group][key] = state[group][key].astype(self.dtypes[group, key])
        self.server.finish_round(self.offset + server_round, state, self._record())
        return None

    def _record(self) -> dict[str, Any]:
        """The round's rounds.jsonl line, but for its number and checkpoint."""
        contributed = {proxy.node_id: fitres for proxy, fitres in self.results}
        names = {node: self.sites[node].name for node in self.sampled}
        return {
            "contributors": len(contributed),
            "failures": [
                f"{names[n]}: sent no masked update" for n in self.sampled if n not in contributed
            ],
            "errors": self.errors,
            "rejected": [],
            "site_train_seconds": {
                names[n]: float(r.metrics.get("train-seconds", float("nan")))
                for n, r in contributed.items()
            },
            "site_examples": {names[n]: r.num_examples for n, r in contributed.items()},
            "wall_seconds": time.perf_counter() - self.started,
            "metrics": self.metrics,
            "secure_aggregation": True,
        }


class SecureFederation:
    """The server side of a federation with secure aggregation (simulated or deployed)."""

    def __init__(
        self, grid: Grid, context: Context, config: DictConfig, run_dir: Path, registry: Registry
    ) -> None:
        self.grid = grid
        self.context = context
        self.config = config
        self.settings = federated_section(config)
        self.run_dir = run_dir
        self.registry = registry
        self.store = RoundStore(run_dir)
        self.failures = FailedRounds(self.store, self.settings)
        self.min_sites = self.settings.min_sites
        self.federation = run_dir.name  # the federation id, once the run directory has one

    def run(self) -> int:
        """Run the remaining rounds; returns the last completed round."""
        check_secure_config(self.config)
        opened = open_federation(
            self.grid,
            self.config,
            self.run_dir,
            self.store,
            max(2, self.min_sites),
            f"secure aggregation needs two, and federated.min_sites={self.min_sites}",
        )
        self.federation, sites = opened.federation, opened.sites
        last, state = opened.last_round, opened.state
        check_single_domain(sites)
        remaining = self.settings.rounds - last
        if remaining <= 0:
            return last
        strategy = SecureFedAvg(self, state, last + 1, sites)
        context = LegacyContext(
            self.context, config=ServerConfig(num_rounds=remaining), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=make_workflow(self.settings))(self.grid, context)
        return self.settings.rounds

    def finish_round(self, server_round: int, state: GlobalState, record: dict[str, Any]) -> None:
        checkpoint = self.store.save(server_round, state)
        record = {"round": server_round, **record, "checkpoint": str(checkpoint)}
        publish_round(self.store, self.registry, self.config, record)
