"""The built-in loggers (logger=tensorboard, logger=mlflow): one short real training with both,
read back with each library's own reader and compared with metrics.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SMALL_RUN
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmcore.cli import main
from fmcore.config import compose, config_sources
from fmcore.errors import ConfigError
from fmcore.plugin_manager import load_registry
from fmcore.plugins.loggers import mlflow as mlflow_logger
from fmcore.plugins.loggers import tensorboard as tensorboard_logger
from fmcore.report import run_figures

STEPS = 3
RUN = [
    *SMALL_RUN,
    f"trainer.max_steps={STEPS}",
    "trainer.log_every=1",
    "trainer.progress=none",
    "eval=knn",  # periodic evaluation at the last step: eval/* reach the loggers too
    "eval.every_steps=3",
    "eval.k=5",
    "eval.train_split=val",  # one small split is enough to carry eval metrics
    "eval.bootstrap=0",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loggers")
    run_dir = root / "run"
    words = [*RUN, "logger=[tensorboard,mlflow]", f"run.dir={run_dir}"]
    assert main(["train", *words, f"run.cache_dir={root / 'cache'}"]) == 0
    return run_dir


def jsonl_metrics(run_dir: Path) -> dict[tuple[str, int], float]:
    """``{(name, step): value}`` of every metrics.jsonl line (the training and eval lines)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(k, line["step"]): v for line in lines for k, v in line.items() if k != "step"}


def report_names(run_dir: Path) -> set[str]:
    """The names of fmcore report's figures for the run (loss, schedules, ...)."""
    return {Path(name).stem for name in run_figures(run_dir)}


def test_tensorboard_holds_the_metrics_of_metrics_jsonl_and_the_report(run: Path) -> None:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    logged = {
        (tag, event.step): event.value
        for tag in events.Tags()["scalars"]
        for event in events.Scalars(tag)
    }
    expected = jsonl_metrics(run)
    assert {key for key in expected if key[0].startswith("eval/knn_")}  # the eval line is there
    assert logged.keys() == expected.keys()
    # event files keep scalars as float32
    assert all(logged[key] == np.float32(value) for key, value in expected.items())
    assert set(events.Tags()["images"]) == {f"report/{name}" for name in report_names(run)}
    (image,) = events.Images("report/loss")
    assert image.step == STEPS and image.encoded_image_string.startswith(b"\x89PNG")


def leaf_keys(node: object, prefix: str = "") -> set[str]:
    """Dotted paths of a nested mapping's leaves."""
    if not isinstance(node, dict):
        return {prefix}
    return {key for k, v in node.items() for key in leaf_keys(v, f"{prefix}.{k}".lstrip("."))}


def test_mlflow_run_holds_the_config_the_metrics_and_the_figures(run: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")
    run_id = json.loads((run / "mlflow" / "run.json").read_text())["run_id"]
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == run.name
    assert client.get_experiment(mlflow_run.info.experiment_id).name == "fmcore"

    expected = jsonl_metrics(run)
    logged = {
        (name, metric.step): metric.value
        for name in mlflow_run.data.metrics
        for metric in client.get_metric_history(run_id, name)
    }
    assert logged == expected  # doubles: the very values of metrics.jsonl

    saved = yaml.safe_load((run / "config.yaml").read_text())
    params = mlflow_run.data.params
    assert set(params) == leaf_keys(saved)
    assert params["trainer.max_steps"] == str(STEPS) and params["run.dir"] == str(run)
    assert params["trainer.betas"] == "[0.9, 0.999]" and params["data.root"] == "null"
    assert json.loads(params["defaults.logger"]) == ["tensorboard", "mlflow"]

    artifacts = {Path(a.path).stem for a in client.list_artifacts(run_id, "report")}
    assert artifacts == report_names(run)


def test_federated_rounds_reach_both_loggers(run: Path, tmp_path: Path) -> None:
    """The server's round hook, as publish_round calls it, into an MLflow store that exists
    (the training run's, so no new tables) and TensorBoard event files of its own."""
    store = f"sqlite:///{run / 'mlflow' / 'mlflow.db'}"
    words = ["federated=fedavg", "federated.rounds=2", "logger=[tensorboard,mlflow]"]
    words += [f"logger.mlflow.tracking_uri={store}", "logger.mlflow.experiment=federation"]
    registry = load_registry()
    config = compose(words, config_sources(registry))
    rounds = {1: {"loss": 2.5, "eval/knn_accuracy": 0.25}, 2: {"loss": 1.75}}
    for number, metrics in rounds.items():
        registry.hook.fmcore_federated_round_end(
            server_round=number,
            metrics=metrics,
            checkpoint=tmp_path / "rounds" / f"round_{number:04d}.safetensors",
            run_dir=tmp_path,
            config=config,
        )
    expected = {
        (name, n): value for n, metrics in rounds.items() for name, value in metrics.items()
    }

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = {(t, e.step): e.value for t in events.Tags()["scalars"] for e in events.Scalars(t)}
    assert logged == expected  # these values are exact in float32

    client = MlflowClient(tracking_uri=store)
    run_id = json.loads((tmp_path / "mlflow" / "run.json").read_text())["run_id"]
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert client.get_experiment(mlflow_run.info.experiment_id).name == "federation"
    history = {
        (name, metric.step): metric.value
        for name in mlflow_run.data.metrics
        for metric in client.get_metric_history(run_id, name)
    }
    assert history == expected
    assert mlflow_run.data.params["federated.rounds"] == "2"


def test_a_logger_not_chosen_writes_nothing(tmp_path: Path) -> None:
    sources = config_sources(load_registry())
    no_logger = compose(RUN, sources)
    tensorboard_only = compose([*RUN, "logger=tensorboard"], sources)
    for plugin, config in ((tensorboard_logger, no_logger), (mlflow_logger, tensorboard_only)):
        plugin.fmcore_train_start(config=config, run_dir=tmp_path)
        plugin.fmcore_step_end(step=1, metrics={"step": 1, "loss": 1.0}, run_dir=tmp_path)
        plugin.fmcore_train_end(summary={"steps": 1}, run_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_chosen_logger_without_its_library_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if absent
    words = [*RUN, "logger=tensorboard", f"run.dir={tmp_path / 'run'}"]
    assert main(["train", *words, f"run.cache_dir={tmp_path / 'cache'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: logger=tensorboard cannot import torch.utils.tensorboard")
    assert error.endswith("pip install 'fmcore-ssl[tensorboard]'") and "\n" not in error

    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    config = compose([*RUN, "logger=mlflow"], config_sources(load_registry()))
    with pytest.raises(ConfigError, match=r"pip install 'fmcore-ssl\[mlflow\]'$"):
        mlflow_logger.fmcore_train_start(config=config, run_dir=tmp_path)


def test_a_bad_logger_setting_fails_naming_the_key() -> None:
    sources = config_sources(load_registry())
    with pytest.raises(ConfigError, match=r"logger\.mlflow\.encoder: Value 'maybe'"):
        compose(["logger=mlflow", "logger.mlflow.encoder=maybe"], sources)
    with pytest.raises(ConfigError, match="unknown logger 'wandb'; valid choices: mlflow, tensorb"):
        compose(["logger=[tensorboard,wandb]"], sources)
