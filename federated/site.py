"""One site's side of a round: compose its config, train locally with the core engine, report.

A site keeps an ordinary engine run directory (checkpoints with optimizer state, data position
and ``local`` weights); each round resumes it, loads the global weights over it and trains
``federated.local_steps`` more steps of a schedule spanning all rounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from fmcore.distributed import pick_device
from fmcore.domain import Domain
from fmcore.engine.checkpoint import CheckpointStore, load_partial_state
from fmcore.engine.trainer import LocalRound, TrainResult, train
from fmcore.eval.knn import KnnProtocol
from fmcore.eval.periodic import periodic_evaluation
from fmcore.factory import build_parts
from fmcore.federated.federation_config import ComposedConfigs, federated_section
from fmcore.federated.partition import site_share
from fmcore.federated.scopes import split_by_group
from fmcore.method import Method
from fmcore.plugin_manager import Registry


@dataclass(frozen=True)
class Site:
    """Who this site is and where its data and state live."""

    name: str
    overrides: tuple[str, ...]  # words this site adds: domain=..., data.root=...
    state_dir: Path
    partition: tuple[int, int] | None = None  # (index, count) when sites split one dataset


def site_config(words: Sequence[str], site: Site, compose: ComposedConfigs) -> DictConfig:
    """The federation's config words plus the site's own, and the site's engine run settings."""
    config = compose([*words, *site.overrides])
    config.run.dir = str(site.state_dir)
    return config


@dataclass
class RoundResult:
    groups: dict[str, dict[str, torch.Tensor]]
    examples: int
    loss: float
    seconds: float
    steps: int


def initial_groups(
    config: DictConfig, registry: Registry, fresh: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """The weights this site would start the federation from (random, or ``init=`` when
    ``fresh``), split into groups: its answer when the server opens the federation. A resumed
    federation has its round's weights, so its sites do not read ``init=`` again."""
    torch.manual_seed(config.run.seed)
    parts = build_parts(config, registry, fresh_start=fresh)
    return split_by_group(parts.method, str(config.domain.name), parts.modality.name)


def train_round(
    config: DictConfig,
    site: Site,
    registry: Registry,
    global_state: dict[str, torch.Tensor],
    server_round: int,
    proximal_mu: float = 0.0,
) -> RoundResult:
    """Resume the site's run, load the global weights, train the round's local steps: steps
    (server_round - 1) x local_steps to server_round x local_steps of the federation's schedule."""
    config.resume = CheckpointStore(site.state_dir / "checkpoints").latest() is not None
    federated = federated_section(config)
    select = None
    if site.partition is not None:
        index, count = site.partition
        by, seed = federated.partition, config.run.seed

        def select(domain: Domain, refs: list[Any]) -> list[Any]:
            return site_share(domain, refs, by, index, count, seed)

    regularizer = proximal_term(global_state, proximal_mu) if proximal_mu > 0 else None
    steps = federated.local_steps
    first_step = (server_round - 1) * steps
    started = time.perf_counter()
    result: TrainResult = train(
        config,
        registry,
        LocalRound(first_step, steps, global_state, select, regularizer),
        evaluation=periodic_evaluation,
    )
    seconds = time.perf_counter() - started
    assert result.method is not None  # always set by train()
    return RoundResult(
        groups=split_by_group(result.method, str(config.domain.name), result.modality),
        examples=result.examples,
        loss=float(result.last_metrics.get("loss", float("nan"))),
        seconds=seconds,
        steps=result.steps - first_step,
    )


def proximal_term(reference: dict[str, torch.Tensor], mu: float):  # -> Callable[[Method], Tensor]
    """FedProx's mu/2 * ||w - w_global||^2 over the weights the server sent (Li et al., 2020)."""
    on_device: dict[str, torch.Tensor] = {}

    def term(method: Method) -> torch.Tensor:
        params = dict(method.named_parameters())
        if not on_device:  # buffers are not optimised; moved to the device once per round
            for key, value in reference.items():
                if key in params:
                    on_device[key] = value.to(params[key].device, params[key].dtype)
        total = sum((params[key] - value).pow(2).sum() for key, value in on_device.items())
        return (mu / 2) * torch.as_tensor(total)

    return term


def evaluate_global(
    config: DictConfig, registry: Registry, global_state: dict[str, torch.Tensor]
) -> tuple[dict[str, float], int]:
    """kNN metrics of the global encoder on this site's labelled splits (``eval=knn`` settings),
    and the number of samples scored."""
    torch.manual_seed(config.run.seed)
    parts = build_parts(config, registry)
    load_partial_state(parts.method, global_state)
    protocol = KnnProtocol.for_run(config)
    device = pick_device(config.trainer.device, 0)
    encoder = parts.method.export_encoder().to(device)
    metrics = protocol.metrics(encoder, parts.domain, device, config.trainer.num_workers)
    return metrics, len(parts.domain.index(protocol.features.test_split))
