"""Shared helpers: run the real ``fmcore`` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# A small, fast configuration of the real digits + SimCLR path (CPU, a few seconds).
SMALL_RUN = [
    "domain=digits",
    "method=simclr",
    "encoder.depth=2",
    "encoder.embed_dim=64",
    "encoder.vit.num_heads=2",
    "method.hidden_dim=64",
    "method.projection_dim=32",
    "trainer.batch_size=16",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.warmup_steps=2",
]


def fmcore(
    *args: str, cwd: Path, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fmcore", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"fmcore {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and far faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
