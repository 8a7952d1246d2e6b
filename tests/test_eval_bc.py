"""The behaviour-cloning probe (``eval=bc``): its metrics against scikit-learn's, its policy
against functions it must (and must not be able to) learn, and the simulated reaching task in
closed loop against a policy that sees the target and one that does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fmcore
from sklearn.metrics import mean_squared_error, r2_score

from fmcore.domains.robotics.closed_loop import ReachingLoop
from fmcore.domains.robotics.reaching import MAX_STEP
from fmcore.eval.bc import Demonstrations, PolicySettings, action_metrics, fit_policy

SETTINGS = PolicySettings(
    hidden_dim=64,
    epochs=60,
    lr=3e-3,
    weight_decay=1e-4,
    batch_size=64,
    use_features=False,
    use_state=True,
)


def steps(count: int, seed: int, features: int = 8) -> Demonstrations:
    """States in [-1, 1]^3 whose expert action is a smooth function of them; features are
    noise that says nothing about it."""
    generator = torch.Generator().manual_seed(seed)
    states = torch.rand(count, 3, generator=generator) * 2 - 1
    actions = torch.stack([torch.tanh(2 * states[:, 0] - states[:, 1]), states[:, 2] ** 2], 1)
    noise = torch.randn(count, features, generator=generator)
    return Demonstrations(noise, states, actions)


def test_action_metrics_match_scikit_learn() -> None:
    train, test = steps(256, 0), steps(64, 1)
    policy = fit_policy(train, steps(64, 2), SETTINGS, seed=0)
    with torch.no_grad():
        predicted = policy(test.features, test.states).numpy()
    metrics = action_metrics(policy, test)
    truth = test.actions.numpy()
    assert metrics["action_mse"] == pytest.approx(mean_squared_error(truth, predicted), rel=1e-5)
    assert metrics["action_r2"] == pytest.approx(
        r2_score(truth, predicted, multioutput="uniform_average"), rel=1e-5
    )


def test_the_policy_learns_from_the_state_and_not_from_noise() -> None:
    train, val, test = steps(512, 0), steps(128, 1), steps(256, 2)
    from_state = fit_policy(train, val, SETTINGS, seed=0)
    assert action_metrics(from_state, test)["action_r2"] > 0.9
    noise_only = PolicySettings(**{**SETTINGS.__dict__, "use_features": True, "use_state": False})
    from_noise = fit_policy(train, val, noise_only, seed=0)
    assert action_metrics(from_noise, test)["action_r2"] < 0.1


def test_the_reaching_task_is_solved_by_seeing_the_target_and_not_without() -> None:
    loop = ReachingLoop([["top"]], size=64)

    def sees_the_target(observations: list[torch.Tensor], states: torch.Tensor) -> torch.Tensor:
        assert observations[0].dtype == torch.uint8  # as the domain hands its samples over
        red, green, blue = (observations[0].float() / 255).unbind(1)  # (B, H, W) each
        target = (red > 0.7) & (green < 0.3) & (blue < 0.3)
        ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        count = target.sum((1, 2)).clamp_min(1)
        centre = torch.stack([(target * xs).sum((1, 2)), (target * ys).sum((1, 2))], 1)
        where = (centre / count[:, None] + 0.5) / 64
        return (where - states).clamp(-MAX_STEP, MAX_STEP)

    def blind(observations: list[torch.Tensor], states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(states)

    assert np.mean(loop.rollouts(sees_the_target, episodes=20, seed=0)) >= 0.9
    assert np.mean(loop.rollouts(blind, episodes=20, seed=0)) == 0  # it starts out of reach


def test_bc_refuses_a_domain_whose_samples_carry_no_actions(tmp_path: Path) -> None:
    result = fmcore(
        "eval",
        "eval=bc",
        "domain=digits",
        "checkpoint=random",
        "trainer.device=cpu",
        f"run.dir={tmp_path / 'bc'}",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    assert "eval=bc needs samples that carry the state and the expert's actions" in result.stderr
    assert "domain=digits's carry no episode, frame, state, actions" in result.stderr
