"""The embedded sample's task in closed loop: a behaviour-cloning policy drives the simulated
arm (:mod:`.reaching`) from what its cameras see, as the recorded episodes were filmed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fmcore.domain import Act
from fmcore.domains.robotics.reaching import HORIZON, Reaching
from fmcore.domains.robotics.sample_data import FRAME_SIZE
from fmcore.video_files.readers import fit_frames

ROLLOUT_SEEDS = 7_000_000  # far from the recorded episodes' seeds (SAMPLE_SEED + episode)


class ReachingLoop:
    """Rollouts of the reaching task, observed as the domain's samples are: ``groups`` holds
    the cameras of each sample of a time step (one each, or all stacked), at ``size`` pixels."""

    action_dim = 2

    def __init__(self, groups: Sequence[Sequence[str]], size: int) -> None:
        self.groups = [list(group) for group in groups]
        self.size = size

    def rollouts(self, act: Act, episodes: int, seed: int) -> list[bool]:
        sims = [Reaching.reset(ROLLOUT_SEEDS + seed * 100_000 + i) for i in range(episodes)]
        reached = [False] * episodes
        for _ in range(HORIZON):
            observations = [
                torch.stack([self.observe(sim, group) for sim in sims]) for group in self.groups
            ]
            states = torch.from_numpy(np.stack([sim.state for sim in sims]))
            actions = act(observations, states)[:, : self.action_dim].detach().cpu().numpy()
            for number, (sim, action) in enumerate(zip(sims, actions, strict=True)):
                sim.step(action)
                reached[number] = reached[number] or sim.reached
        return reached

    def observe(self, sim: Reaching, cameras: Sequence[str]) -> torch.Tensor:
        """(3 * cameras, size, size) uint8: rendered as the sample was, then resized and
        cropped as the domain's ``load`` does."""
        frames = np.stack([sim.render(camera, FRAME_SIZE) for camera in cameras])
        fitted = fit_frames(frames, (self.size, self.size))
        stacked = np.concatenate(list(fitted), axis=-1)  # (H, W, 3 * cameras)
        return torch.from_numpy(stacked).permute(2, 0, 1)
