"""`fmcore report <run dir>`: figures of a real run, read back as images; a clear error without
metrics."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmcore.cli import main
from fmcore.config import compose, config_sources
from fmcore.engine.trainer import train
from fmcore.errors import ConfigError, MissingPath
from fmcore.eval.periodic import periodic_evaluation
from fmcore.eval.run import evaluate
from fmcore.plugin_manager import load_registry
from fmcore.report import write_report

CPU = ["trainer.device=cpu", "trainer.num_workers=0"]
SMALL_MAE = [
    "domain=digits",
    "method=mae",
    "encoder.depth=2",
    "encoder.embed_dim=64",
    "encoder.vit.num_heads=2",
    "method.decoder.embed_dim=32",
    "method.decoder.depth=1",
    "method.decoder.num_heads=2",
    "trainer.batch_size=16",
    *CPU,
    "trainer.warmup_steps=2",
    "trainer.progress=none",
]
LINE_COLOUR = (31, 119, 180)  # matplotlib's first line colour, C0
FIGURES = {
    "loss.png",
    "schedules.png",
    "throughput.png",
    "collapse.png",
    "other_metrics.png",
    "periodic_eval.png",
    "eval.png",
}


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_report_of_an_mae_run_with_evaluations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process (no interpreter start-ups): train with periodic kNN, then fmcore eval
    # into the same directory, as `fmcore train` and `fmcore eval ... run.dir=<run>` would.
    run = tmp_path / "run"
    plugins = load_registry()
    sources = config_sources(plugins)
    steps = ["trainer.max_steps=4", "trainer.log_every=1", "trainer.checkpoint_every=2"]
    periodic = ["eval=knn", "eval.every_steps=2"]
    config = compose([*SMALL_MAE, *steps, *periodic, f"run.dir={run}"], sources)
    train(config, plugins, evaluation=periodic_evaluation)
    words = [f"checkpoint={run}", "eval=knn", *CPU, f"run.dir={run}"]
    evaluate(compose(words, sources), plugins, words)

    assert main(["report", str(run)]) == 0
    report = run / "report"
    assert f"wrote {len(FIGURES)} figures" in capsys.readouterr().out
    assert {p.name for p in report.glob("*.png")} == FIGURES
    for name in FIGURES:
        with Image.open(report / name) as image:
            assert image.format == "PNG" and image.mode in ("RGB", "RGBA"), name
            assert image.width > 0 and image.height > 0, name
    with Image.open(report / "loss.png") as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.mean(axis=-1).var() > 100  # not a blank canvas
    curve = np.abs(pixels - LINE_COLOUR).max(axis=-1) < 40
    assert curve.sum() > 100  # and the loss curve is drawn, not only axes

    index = (report / "index.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", index)
    assert {link for link in linked if "/" not in link} == FIGURES
    pictures = [link for link in linked if link.startswith("../reconstructions/")]
    assert [Path(p).name for p in pictures] == ["step_00000002.png", "step_00000004.png"]
    assert all((report / link).is_file() for link in linked)
    assert "domain digits, method mae" in index

    write_report(run)  # again: the report is replaced, nothing is left beside it
    assert sorted(p.name for p in run.iterdir() if "report" in p.name) == ["report"]


def test_a_directory_without_metrics_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path} holds no metrics.jsonl" in capsys.readouterr().err
    with pytest.raises(MissingPath):
        write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="holds no metrics yet"):
        write_report(tmp_path)
    assert not (tmp_path / "report").exists()
