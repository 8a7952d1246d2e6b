"""``fmcore federate``: all sites of a federation on one machine, in Flower's simulation."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flwr.clientapp.typing import Mod
from omegaconf import DictConfig

from fmcore.errors import ConfigError, FmcoreError
from fmcore.federated.federation_config import federated_section, save_words
from fmcore.federated.store import RoundStore
from fmcore.run_files import SITES_DIR, timestamped_run_dir


@dataclass
class FederationResult:
    run_dir: Path
    rounds: int


def federation_dir(config: DictConfig) -> Path:
    if config.run.dir:
        return Path(str(config.run.dir))
    return timestamped_run_dir("federated", str(config.domain.name), str(config.method.name))


def simulate(
    config: DictConfig, words: Sequence[str], client_mods: Sequence[Mod] = ()
) -> FederationResult:
    """Run (or, with ``resume=true``, continue) a simulated federation; raise if it fails.

    ``words`` are the config words every site composes its own config from; ``client_mods`` are
    Flower client mods wrapped around every site's ClientApp.
    """
    from flwr.simulation import run_simulation

    from fmcore.federated.apps import make_client_app, make_server_app

    run_dir = federation_dir(config).resolve()
    done = RoundStore(run_dir).latest()
    if done is None and config.resume:
        raise ConfigError(
            f"resume=true but {run_dir} holds no complete federated round to resume from"
        )
    if done is not None and not config.resume:
        raise ConfigError(
            f"{run_dir} already holds federated rounds: add resume=true to continue that"
            " federation, or choose another run.dir"
        )
    config.run.dir = str(run_dir)
    settings = federated_section(config)
    failure: list[BaseException] = []
    server_app = make_server_app(config, run_dir, failure)  # refuses a bad config first
    client_app = make_client_app(list(words), run_dir / SITES_DIR, client_mods)
    if done is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_words(run_dir, words)
    resources = settings.simulation
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app,
        client_app,
        num_supernodes=settings.sites,
        backend_config={
            "client_resources": {
                "num_cpus": resources.cpus_per_site,
                "num_gpus": resources.gpus_per_site,
            }
        },
    )
    if failure:
        raise FmcoreError(f"the federation stopped: {failure[0]}") from failure[0]
    latest = RoundStore(run_dir).latest()
    rounds = latest[0] if latest else 0
    if rounds < settings.rounds:
        raise FmcoreError(
            f"the federation stopped after {rounds} of {settings.rounds} rounds; see the log above"
        )
    return FederationResult(run_dir, rounds)
