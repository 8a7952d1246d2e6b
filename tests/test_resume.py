"""Killing a run while it writes a checkpoint loses nothing: resume=true continues bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL_RUN, fmcore
from omegaconf import OmegaConf
from safetensors.torch import load_file

# A large projection head makes each checkpoint ~200 MB, so writing one takes long enough for the
# test to see the partial directory and kill the process inside that window.
BIG_STATE_RUN = [
    *SMALL_RUN,
    "method.hidden_dim=2048",
    "method.projection_dim=2048",
    "trainer.max_steps=6",
    "trainer.checkpoint_every=1",
    "trainer.keep_checkpoints=2",
    "trainer.log_every=1",
]


def kill_while_writing_checkpoint(run: Path, cwd: Path, attempts: int = 3) -> str:
    """Start training, SIGKILL it while a checkpoint is being written; name the partial one.

    The writer may finish (rename its partial folder) between our look and the kill, so the
    verdict is read from the folder after the kill, when nothing changes any more; a run killed
    just too late is started again from scratch.
    """
    for _ in range(attempts):
        shutil.rmtree(run, ignore_errors=True)
        if partial := _kill_once(run, cwd):
            return partial
    pytest.fail(f"never caught a checkpoint being written in {attempts} runs")


def _kill_once(run: Path, cwd: Path) -> str | None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fmcore", "train", *BIG_STATE_RUN, f"run.dir={run}"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    checkpoints = run / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while process.poll() is None and time.monotonic() < deadline:
            names = os.listdir(checkpoints) if checkpoints.exists() else []
            # Kill only once an earlier checkpoint exists, so there is something to resume from.
            if any(n.startswith(".partial-step_") for n in names) and any(
                n.startswith("step_") for n in names
            ):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return _partial_after_kill(checkpoints)
            time.sleep(0.0005)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return None


def _partial_after_kill(checkpoints: Path) -> str | None:
    partial = sorted(p.name for p in checkpoints.glob(".partial-step_*"))
    complete = sorted(p.name for p in checkpoints.glob("step_*"))
    if not partial or not complete:
        return None
    return partial[-1]


@pytest.mark.slow
def test_kill_during_checkpoint_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    fmcore("train", *BIG_STATE_RUN, f"run.dir={reference}", cwd=tmp_path)

    run = tmp_path / "interrupted"
    partial_name = kill_while_writing_checkpoint(run, tmp_path)
    written_step = int(partial_name.removeprefix(".partial-step_"))
    complete = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert complete, "the earlier complete checkpoint must survive the kill"
    assert int(complete[-1].removeprefix("step_")) < written_step
    assert not (run / "encoder.safetensors").exists()

    # The run's own config.yaml is the base: run.dir and resume=true are all it takes.
    result = fmcore("train", f"run.dir={run}", "resume=true", cwd=tmp_path)
    assert "finished 6 steps" in result.stdout

    expected = load_file(str(reference / "encoder.safetensors"))
    resumed = load_file(str(run / "encoder.safetensors"))
    assert expected.keys() == resumed.keys()
    different = [k for k in expected if not expected[k].equal(resumed[k])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"

    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6], "metrics past the resumed checkpoint must not repeat"
    assert not list((run / "checkpoints").glob(".partial-*")), (
        "stale partial checkpoints are removed"
    )


def test_resume_refuses_to_change_the_recipe_but_accepts_the_same_command(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fmcore("train", *SMALL_RUN, "trainer.max_steps=2", f"run.dir={run}", cwd=tmp_path)
    changed = fmcore(
        "train",
        *SMALL_RUN,
        "trainer.max_steps=3",
        "trainer.lr=0.1",
        f"run.dir={run}",
        "resume=true",
        cwd=tmp_path,
        check=False,
    )
    assert changed.returncode == 2
    assert "cannot change trainer.lr" in changed.stderr
    saved = OmegaConf.load(run / "config.yaml")  # the saved config is intact
    assert saved.encoder.depth == 2 and saved.trainer.lr == 5.0e-4

    same = fmcore(
        "train", *SMALL_RUN, "trainer.max_steps=3", f"run.dir={run}", "resume=true", cwd=tmp_path
    )
    assert "finished 3 steps" in same.stdout


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    result = fmcore(
        "train",
        *SMALL_RUN,
        f"run.dir={tmp_path / 'none'}",
        "resume=true",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "holds no complete checkpoint" in result.stderr
