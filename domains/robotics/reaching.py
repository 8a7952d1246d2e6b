"""A small simulated reaching task: the embedded sample's robot, and the closed-loop test of a
behaviour-cloning probe.

A planar two-link arm is mounted at the bottom centre of a square table; its end-effector (the
gripper) must reach a red target placed at random. The proprioceptive state is the gripper's
(x, y) position only: where the target is, the policy must see. An action moves the gripper by
at most ``MAX_STEP`` per axis. The scripted expert heads for the target with a little noise;
an episode succeeds when the gripper comes within ``REACHED`` of the target before
``HORIZON`` steps. Two cameras watch it: ``top`` sees the whole table, ``wrist`` a window
that follows the gripper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HORIZON = 24  # steps per episode
FPS = 10  # frames per second of the recorded episodes
MAX_STEP = 0.08  # largest move per axis and step (table side = 1)
REACHED = 0.07  # gripper-target distance that counts as success
TARGET_RADIUS = 0.07
EXPERT_NOISE = 0.01  # std of the expert's action noise
BASE = np.array([0.5, 1.0])  # the arm's shoulder, bottom centre (image y grows downwards)
LINK = 0.5  # each link's length: the arm reaches anywhere on the table
WRIST_VIEW = 0.4  # side of the table square the wrist camera sees
CAMERAS = ("top", "wrist")


@dataclass
class Reaching:
    """One episode of the task: the gripper and the target, both in [0, 1]^2."""

    gripper: np.ndarray
    target: np.ndarray

    @classmethod
    def reset(cls, seed: int) -> Reaching:
        rng = np.random.default_rng(seed)
        target = rng.uniform(0.15, 0.85, 2)
        gripper = rng.uniform(0.2, 0.8, 2)
        while np.linalg.norm(gripper - target) < 0.35:  # a reach of several steps
            gripper = rng.uniform(0.2, 0.8, 2)
        return cls(gripper, target)

    @property
    def state(self) -> np.ndarray:
        return self.gripper.astype(np.float32)

    @property
    def reached(self) -> bool:
        return bool(np.linalg.norm(self.gripper - self.target) < REACHED)

    def step(self, action: np.ndarray) -> None:
        move = np.clip(np.asarray(action, dtype=np.float64), -MAX_STEP, MAX_STEP)
        self.gripper = np.clip(self.gripper + move, 0.0, 1.0)

    def expert_action(self, rng: np.random.Generator) -> np.ndarray:
        move = np.clip(self.target - self.gripper, -MAX_STEP, MAX_STEP)
        return (move + rng.normal(0, EXPERT_NOISE, 2)).astype(np.float32)

    def render(self, camera: str, size: int) -> np.ndarray:
        """The ``camera``'s (size, size, 3) uint8 RGB image."""
        if camera == "top":
            return _draw(self, origin=np.zeros(2), span=1.0, size=size)
        if camera == "wrist":
            origin = self.gripper - WRIST_VIEW / 2
            return _draw(self, origin=origin, span=WRIST_VIEW, size=size)
        raise ValueError(f"unknown camera '{camera}'; the task has {', '.join(CAMERAS)}")


def run_episode(
    seed: int, policy: Callable[[Reaching], np.ndarray] | None = None
) -> tuple[list[Reaching], np.ndarray, np.ndarray, bool]:
    """Roll out one episode from ``Reaching.reset(seed)``: the expert acts unless ``policy``
    (``(sim) -> action``, which may render the cameras it needs) is given. Returns the scene
    before each step, the states, the actions and whether the gripper reached the target."""
    sim = Reaching.reset(seed)
    rng = np.random.default_rng(seed)
    states, actions, sims = [], [], []
    success = False
    for _ in range(HORIZON):
        action = sim.expert_action(rng) if policy is None else np.asarray(policy(sim))
        states.append(sim.state)
        actions.append(action.astype(np.float32))
        sims.append(Reaching(sim.gripper.copy(), sim.target.copy()))
        sim.step(action)
        success = success or sim.reached
    return sims, np.stack(states), np.stack(actions), success


def _draw(sim: Reaching, origin: np.ndarray, span: float, size: int) -> np.ndarray:
    """The table square at ``origin`` with side ``span``: a wooden table with a grid, the
    target, the arm's two links and the gripper."""
    scale = size / span
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    world_x, world_y = origin[0] + xs / scale, origin[1] + ys / scale
    on_table = (world_x >= 0) & (world_x <= 1) & (world_y >= 0) & (world_y <= 1)
    grid = ((np.floor(world_x * 8) + np.floor(world_y * 8)) % 2 == 0) & on_table
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = (40, 40, 48)  # the floor beyond the table
    image[on_table] = (176, 142, 100)
    image[grid] = (160, 128, 90)

    def disk(centre: np.ndarray, radius: float, colour: tuple[int, int, int]) -> None:
        inside = (world_x - centre[0]) ** 2 + (world_y - centre[1]) ** 2 <= radius**2
        image[inside] = colour

    def segment(start: np.ndarray, end: np.ndarray, width: float, colour) -> None:
        direction = end - start
        length2 = float(direction @ direction) or 1e-9
        t = np.clip(
            ((world_x - start[0]) * direction[0] + (world_y - start[1]) * direction[1]) / length2,
            0,
            1,
        )
        near = (world_x - start[0] - t * direction[0]) ** 2 + (
            world_y - start[1] - t * direction[1]
        ) ** 2 <= width**2
        image[near] = colour

    disk(sim.target, TARGET_RADIUS, (210, 40, 40))
    elbow = _elbow(sim.gripper)
    segment(BASE, elbow, 0.025, (90, 90, 100))
    segment(elbow, sim.gripper, 0.02, (120, 120, 135))
    disk(elbow, 0.03, (60, 60, 70))
    disk(sim.gripper, 0.035, (40, 90, 220))
    return image.round().astype(np.uint8)


def _elbow(gripper: np.ndarray) -> np.ndarray:
    """The elbow of the two-link arm whose hand is at ``gripper`` (the elbow-left solution)."""
    reach = gripper - BASE
    distance = min(float(np.linalg.norm(reach)), 2 * LINK - 1e-6)
    middle = BASE + reach / 2
    normal = np.array([-reach[1], reach[0]]) / (np.linalg.norm(reach) or 1.0)
    return middle + normal * np.sqrt(max(LINK**2 - (distance / 2) ** 2, 0.0))
