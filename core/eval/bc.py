"""Behaviour cloning on frozen features (``fmcore eval eval=bc``): how well a small policy on an
encoder's features imitates the demonstrations' expert, the test robot learning asks of a
visual representation (R3M, VC-1, Manipulate-by-Seeing).

The samples of a time step (a camera each, or stacked cameras) are encoded and their features
joined; with the state beside them, an MLP is fit to the expert's action chunk on the train
episodes (standardised inputs and targets, the epoch with the lowest validation error kept) and
scored on held-out episodes: action MSE and R². Where the domain has the simulator its
demonstrations came from (:meth:`fmcore.domain.Domain.closed_loop`), the policy also drives new
episodes, and the success rate is reported. A state-only policy fit the same way is the
baseline that says what the pixels add.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from fmcore.config import as_dict
from fmcore.config_sections import BcSection, eval_section
from fmcore.distributed import pick_device
from fmcore.domain import Act, Domain
from fmcore.encoder import Encoder
from fmcore.errors import ConfigError
from fmcore.eval.features import RawPixels, encode_samples, split_refs
from fmcore.eval.loading import load_encoder
from fmcore.eval.results import write_result
from fmcore.eval.sweep import Standardize
from fmcore.plugin_manager import Registry

CARRIED = ("episode", "frame", "state", "actions")  # what a demonstration sample's reference has


@dataclass(frozen=True)
class Demonstrations:
    """One split, a row per time step: joined features, states, expert action chunks."""

    features: Tensor  # (N, F)
    states: Tensor  # (N, S)
    actions: Tensor  # (N, A * chunk)

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass(frozen=True)
class PolicySettings:
    hidden_dim: int
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    use_features: bool
    use_state: bool


def demonstrations(
    encoder: Encoder | RawPixels,
    domain: Domain,
    split: str,
    *,
    batch_size: int,
    device: torch.device | str,
    num_workers: int,
    kind: str,
) -> Demonstrations:
    """The time steps of ``split``: the features of each step's samples joined in index order."""
    refs = split_refs(domain, split)
    missing = [name for name in CARRIED if not hasattr(refs[0], name)]
    if missing:
        raise ConfigError(
            f"eval=bc needs samples that carry the state and the expert's actions"
            f" (domain=robotics); domain={domain.name}'s carry no {', '.join(missing)}"
        )
    features, _, _ = encode_samples(
        encoder,
        domain,
        refs,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        kind=kind,
    )
    steps: dict[tuple[str, int], list[int]] = {}
    for row, ref in enumerate(refs):
        steps.setdefault((ref.episode, ref.frame), []).append(row)
    layouts = {tuple(_cameras(refs[r]) for r in rows) for rows in steps.values()}
    if len(layouts) > 1:  # features are joined slot by slot: each slot must be one camera
        shown = " and ".join(str(layout) for layout in sorted(layouts)[:2])
        raise ConfigError(
            f"split '{split}': time steps come from different cameras ({shown}); set"
            " data.cameras to the cameras every episode has"
        )
    rows = list(steps.values())
    return Demonstrations(
        features=torch.stack([features[r].reshape(-1) for r in rows]),
        states=torch.tensor([refs[r[0]].state for r in rows], dtype=torch.float32),
        actions=torch.tensor([refs[r[0]].actions for r in rows], dtype=torch.float32),
    )


def _cameras(ref: Any) -> str:
    """The cameras a sample shows, where its reference names them (robotics' ``reads``)."""
    return "+".join(read.camera for read in getattr(ref, "reads", ()))


class Policy(nn.Module):
    """features and/or state -> action chunk: standardised inputs, an MLP of two hidden
    layers, and the actions mapped back to their units."""

    def __init__(self, train: Demonstrations, settings: PolicySettings) -> None:
        super().__init__()
        self.use_features, self.use_state = settings.use_features, settings.use_state
        self.features = Standardize(train.features)
        self.states = Standardize(train.states)
        self.actions = Standardize(train.actions)
        width = train.features.shape[1] * self.use_features + train.states.shape[1] * self.use_state
        hidden = settings.hidden_dim
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, train.actions.shape[1]),
        )

    def standardised(self, features: Tensor, states: Tensor) -> Tensor:
        """The prediction in standardised action units."""
        parts = []
        if self.use_features:
            parts.append(self.features(features))
        if self.use_state:
            parts.append(self.states(states))
        return self.mlp(torch.cat(parts, dim=1))

    def forward(self, features: Tensor, states: Tensor) -> Tensor:
        return self.actions.inverse(self.standardised(features, states))


def fit_policy(
    train: Demonstrations, val: Demonstrations, settings: PolicySettings, seed: int
) -> Policy:
    """Fit with AdamW on the standardised MSE; keep the epoch that does best on ``val``."""
    if not (settings.use_features or settings.use_state):
        raise ConfigError("a policy needs features, the state or both")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    policy = Policy(train, settings)
    optimizer = torch.optim.AdamW(
        policy.mlp.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    targets = policy.actions(train.actions)
    best, best_error = copy.deepcopy(policy.mlp.state_dict()), float("inf")
    for _ in range(settings.epochs):
        policy.train()
        for rows in torch.randperm(len(train), generator=generator).split(settings.batch_size):
            predicted = policy.standardised(train.features[rows], train.states[rows])
            loss = nn.functional.mse_loss(predicted, targets[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        error = validation_error(policy, val)
        if error < best_error:
            best, best_error = copy.deepcopy(policy.mlp.state_dict()), error
    if best_error == float("inf"):
        raise ConfigError(
            "eval=bc: the policy's validation error was not finite in any epoch; lower eval.lr"
        )
    policy.mlp.load_state_dict(best)
    return policy.eval()


@torch.no_grad()
def validation_error(policy: Policy, split: Demonstrations) -> float:
    policy.eval()
    predicted = policy.standardised(split.features, split.states)
    return float(nn.functional.mse_loss(predicted, policy.actions(split.actions)))


@torch.no_grad()
def action_metrics(policy: Policy, test: Demonstrations) -> dict[str, float]:
    """Mean squared error in the actions' units, and R² averaged over action dimensions (1:
    perfect; 0: no better than the test split's mean action; a dimension that does not vary
    on test scores 1 when predicted exactly, else 0, as scikit-learn's ``r2_score``)."""
    predicted = policy(test.features, test.states)
    residual = ((predicted - test.actions) ** 2).sum(0)
    spread = ((test.actions - test.actions.mean(0)) ** 2).sum(0)
    varies = spread > 0
    r2 = torch.where(varies, 1 - residual / spread.where(varies, 1), (residual == 0).float())
    return {
        "action_mse": float(((predicted - test.actions) ** 2).mean()),
        "action_r2": float(r2.mean()),
    }


def policy_settings(settings: BcSection, use_features: bool) -> PolicySettings:
    return PolicySettings(
        hidden_dim=settings.hidden_dim,
        epochs=settings.epochs,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        batch_size=settings.probe_batch_size,
        use_features=use_features,
        use_state=settings.with_state or not use_features,
    )


def actor(
    policy: Policy, encoder: Encoder | RawPixels, domain: Domain, kind: str, device: torch.device
) -> Act:
    """The policy as a simulator drives it: each time step's camera samples encoded as the
    demonstrations were, their features joined, the action chunk predicted."""

    @torch.no_grad()
    def act(observations: list[Tensor], states: Tensor) -> Tensor:
        if policy.use_features:
            encoded = [
                encoder.features(domain.encoder_input(o.to(device)), kind).float().cpu()
                for o in observations
            ]
            features = torch.cat(encoded, dim=1)
        else:
            features = states.new_zeros((len(states), 0))
        return policy(features, states.float())

    return act


def evaluate_bc(config: DictConfig, registry: Registry, words: Sequence[str]) -> dict[str, Any]:
    """``eval=bc``: the pretrained policy and the state-only one, scored on test episodes and,
    where the domain has a simulator, in closed loop; written to ``eval.json``."""
    settings = eval_section(config)
    assert isinstance(settings, BcSection)
    loaded = load_encoder(config, registry, words)
    kind = loaded.feature_kind(settings.features, "eval.features")
    device = pick_device(str(config.trainer.device), 0)
    split_names = (settings.train_split, settings.val_split, settings.test_split)
    train, val, test = (
        demonstrations(
            loaded.encoder,
            loaded.domain,
            name,
            batch_size=settings.batch_size,
            device=device,
            num_workers=config.trainer.num_workers,
            kind=kind,
        )
        for name in split_names
    )
    loop = loaded.domain.closed_loop() if settings.rollouts else None
    seed = config.run.seed
    metrics: dict[str, float] = {}
    for prefix, use_features in (("", True), ("state_only_", False)):
        policy = fit_policy(train, val, policy_settings(settings, use_features), seed)
        metrics.update({prefix + k: v for k, v in action_metrics(policy, test).items()})
        if loop is not None:
            act = actor(policy, loaded.encoder, loaded.domain, kind, device)
            reached = loop.rollouts(act, settings.rollouts, seed)
            metrics[prefix + "success_rate"] = sum(reached) / len(reached)
    result = {
        "protocol": settings.name,
        "metrics": metrics,
        "settings": as_dict(config.eval),
        "checkpoint": loaded.checkpoint,
        "checkpoint_step": loaded.metadata.get("step"),
        "domain": str(config.domain.name),
        "encoder": loaded.encoder_config,
        "splits": dict(zip(split_names, (len(train), len(val), len(test)), strict=True)),
        "features": kind,
        "feature_dim": int(train.features.shape[1]),
        "closed_loop_episodes": settings.rollouts if loop is not None else 0,
        "seed": seed,
    }
    return write_result(config, result)
