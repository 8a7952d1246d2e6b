"""The embedded robotics sample: scripted-expert demonstrations of the simulated reaching task
(:mod:`.reaching`), written as a LeRobot v3.0 dataset (parquet + H.264 MP4, several episodes
per file) in ``lerobot/`` and as robomimic HDF5 in ``robomimic.hdf5``: the same episodes in
both. Each episode's task says on which half of the table the target lies, the per-episode
label ``data.label=task`` evaluates."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmcore.domains.robotics.reaching import CAMERAS, FPS, run_episode
from fmcore.domains.robotics.writers import Recording, write_lerobot, write_robomimic
from fmcore.labels import SAMPLE_SEED

EPISODES = 160
FRAME_SIZE = 64  # rendered pixels per side
EPISODES_PER_FILE = 50  # the v3 dataset's episodes share data and video files, 50 to a file
LEROBOT_FOLDER = "lerobot"
HDF5_FILE = "robomimic.hdf5"
STATE_KEY = "gripper_pos"  # the HDF5 file's state dataset, obs/gripper_pos


def record(count: int, first_seed: int = SAMPLE_SEED, size: int = FRAME_SIZE) -> list[Recording]:
    """``count`` expert demonstrations rendered by both cameras at ``size`` pixels."""
    recordings = []
    for seed in range(first_seed, first_seed + count):
        scenes, states, actions, success = run_episode(seed)
        side = "left" if scenes[0].target[0] < 0.5 else "right"
        recordings.append(
            Recording(
                frames={c: np.stack([s.render(c, size) for s in scenes]) for c in CAMERAS},
                states=states,
                actions=actions,
                task=f"reach the target on the {side}",
                success=success,
            )
        )
    return recordings


def write_sample(directory: Path) -> None:
    recordings = record(EPISODES)
    write_lerobot(
        directory / LEROBOT_FOLDER, recordings, FPS, "v3.0", episodes_per_file=EPISODES_PER_FILE
    )
    write_robomimic(directory / HDF5_FILE, recordings, STATE_KEY)
