"""`fmcore train` end to end on the real digits domain with SimCLR, in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import SMALL_RUN, fmcore
from omegaconf import OmegaConf
from safetensors.torch import load_file


def test_train_writes_config_metrics_checkpoints_and_encoder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = fmcore(
        "train",
        *SMALL_RUN,
        "trainer.max_steps=6",
        "trainer.log_every=2",
        "trainer.checkpoint_every=3",
        f"run.dir={run}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert "finished 6 steps" in result.stdout

    config = OmegaConf.load(run / "config.yaml")
    assert config.trainer.max_steps == 6
    assert config.domain.name == "digits" and config.method.name == "simclr"
    assert config.run.dir == str(run)

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6]
    assert all(line["loss"] > 0 and line["samples_per_s"] > 0 for line in lines)

    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step_00000003", "step_00000006"]
    trainer_state = json.loads((run / "checkpoints/step_00000006/trainer.json").read_text())
    assert trainer_state["step"] == 6
    assert trainer_state["ranks"] == [{"batches_consumed": 6, "skipped": 0}]

    encoder = load_file(str(run / "encoder.safetensors"))
    assert encoder["trunk.cls_token"].shape == (1, 1, 64)
    assert encoder["tokenizer.proj.weight"].shape == (64, 1, 4, 4)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["skipped_samples"] == 0


def test_saved_config_reproduces_the_run(tmp_path: Path) -> None:
    first = tmp_path / "first"
    fmcore("train", *SMALL_RUN, "trainer.max_steps=3", f"run.dir={first}", cwd=tmp_path)
    second = tmp_path / "second"
    fmcore("train", "--config", str(first / "config.yaml"), f"run.dir={second}", cwd=tmp_path)

    a = load_file(str(first / "encoder.safetensors"))
    b = load_file(str(second / "encoder.safetensors"))
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)
    initial_first = OmegaConf.load(first / "config.yaml")
    initial_second = OmegaConf.load(second / "config.yaml")
    initial_second.run.dir = initial_first.run.dir
    assert initial_first == initial_second


def test_existing_checkpoints_are_never_overwritten_without_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fmcore("train", *SMALL_RUN, "trainer.max_steps=2", f"run.dir={run}", cwd=tmp_path)
    again = fmcore(
        "train", *SMALL_RUN, "trainer.max_steps=2", f"run.dir={run}", cwd=tmp_path, check=False
    )
    assert again.returncode == 2
    assert "already holds checkpoints" in again.stderr and "resume=true" in again.stderr


def test_gradient_accumulation_draws_one_batch_per_micro_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fmcore(
        "train",
        *SMALL_RUN,
        "trainer.max_steps=2",
        "trainer.grad_accum_steps=3",
        "trainer.log_every=1",
        f"run.dir={run}",
        cwd=tmp_path,
    )
    state = json.loads((run / "checkpoints/step_00000002/trainer.json").read_text())
    assert state["ranks"] == [{"batches_consumed": 6, "skipped": 0}]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
