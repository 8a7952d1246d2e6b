"""DDP under torchrun: two CPU processes (gloo) train one run and write one set of outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_RUN

DINOV2_TINY = [
    *(w for w in SMALL_RUN if not w.startswith("method")),
    "method=dinov2_small",
    "method.dino.prototypes=64",
    "method.ibot.prototypes=64",
    "method.dino.hidden_dim=32",
    "method.dino.bottleneck_dim=16",
]


@pytest.mark.slow
@pytest.mark.parametrize("words", [SMALL_RUN, DINOV2_TINY], ids=["simclr", "dinov2"])
def test_torchrun_two_processes_train_one_run(words: list[str], tmp_path: Path) -> None:
    """DINOv2 adds all-reduced Sinkhorn-Knopp and iBOT masks that must agree across ranks."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    run = tmp_path / "run"
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "fmcore",
            "train",
            *words,
            "trainer.max_steps=4",
            "trainer.log_every=2",
            f"run.dir={run}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("finished 4 steps") == 2  # each rank finishes the same run
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]  # only rank 0 writes
    assert (run / "encoder.safetensors").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000004"]
