"""``logger=mlflow``: one MLflow run per training run: the resolved config as params, every
step's metrics, and at the end the report's figures (and optionally the encoder) as artifacts.

Without ``logger.mlflow.tracking_uri`` the store is a local SQLite file inside the run directory
(``mlflow/mlflow.db``, artifacts in ``mlflow/artifacts``): no server, nothing outside the run.
``mlflow/run.json`` names the MLflow run, so ``resume=true`` (and a federated site's next round)
continues it; the params are logged when it is created. A run that stops on an error stays
``RUNNING`` in MLflow, as there is no hook for a failed run. Under ``fmcore federate`` the server
logs each round's aggregated metrics (those of rounds.jsonl) at the round's number to an MLflow
run of the federation's directory; each site's local training logs to its own run directory's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fmcore.api import ENCODER_FILE, as_dict, atomic_write_text, hookimpl, report_figures
from fmcore.plugins.loggers.selection import OpenLoggers, require, scalars

LOGGER = "mlflow"
FOLDER = "mlflow"  # in the run directory: run.json, and the local store when there is no URI
RUN_FILE = "run.json"
PARAMS_PER_CALL = 100  # MLflow's limit of params in one log_batch
PARAM_LENGTH = 6000  # MLflow's limit of a param's value (a long list of site paths is cut)


def local_store(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / FOLDER / 'mlflow.db').resolve()}"


def flat_params(node: Any, prefix: str = "") -> dict[str, str]:
    """``{dotted key: value}`` of a nested config; lists and nulls as JSON (``[0.9, 0.999]``)."""
    if isinstance(node, dict):
        found: dict[str, str] = {}
        for key, value in node.items():
            found.update(flat_params(value, f"{prefix}{key}."))
        return found
    value = node if isinstance(node, str) else json.dumps(node)
    return {prefix[:-1]: value[:PARAM_LENGTH]}


class Run:
    """One training run's MLflow run, opened (created or continued) at train start."""

    def __init__(self, config: Any, run_dir: Path, settings: dict[str, Any]) -> None:
        self.tracking = require("mlflow.tracking", LOGGER)
        self.entities = require("mlflow.entities", LOGGER)
        self.settings = settings
        (run_dir / FOLDER).mkdir(parents=True, exist_ok=True)
        uri = settings["tracking_uri"] or local_store(run_dir)
        self.client = self.tracking.MlflowClient(tracking_uri=uri)
        record = run_dir / FOLDER / RUN_FILE
        known = json.loads(record.read_text()) if record.is_file() else {}
        if known.get("tracking_uri") == uri:
            self.run_id = str(known["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self._experiment(run_dir, local=settings["tracking_uri"] is None)
        name = settings["run_name"] or run_dir.name
        self.run_id = self.client.create_run(experiment, run_name=name).info.run_id
        params = [self.entities.Param(k, v) for k, v in flat_params(as_dict(config)).items()]
        for first in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[first : first + PARAMS_PER_CALL])
        atomic_write_text(record, json.dumps({"tracking_uri": uri, "run_id": self.run_id}))

    def _experiment(self, run_dir: Path, local: bool) -> str:
        """The experiment's id, created when missing (a local store keeps its artifacts beside
        it, not in the working directory's ``mlruns``)."""
        name = self.settings["experiment"]
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = (run_dir / FOLDER / "artifacts").resolve().as_uri() if local else None
        return str(self.client.create_experiment(name, artifact_location=location))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        logged = [
            self.entities.Metric(name, value, timestamp, step)
            for name, value in scalars(metrics).items()
        ]
        self.client.log_batch(self.run_id, metrics=logged)

    def flush(self) -> None:
        """Nothing waits: each log_batch is stored when it is called."""

    def close(self, run_dir: Path, step: int, training: bool) -> None:
        """Mark the run finished, after a training run's figures and encoder."""
        if training and self.settings["figures"]:
            for name, figure in report_figures(run_dir).items():
                self.client.log_figure(self.run_id, figure, f"report/{name}")
        if training and self.settings["encoder"]:
            self.client.log_artifact(self.run_id, str(run_dir / ENCODER_FILE))
        self.client.set_terminated(self.run_id, "FINISHED")


_runs = OpenLoggers(LOGGER, Run, ("mlflow.tracking", "mlflow.entities"))


@hookimpl
def fmcore_train_start(config: Any, run_dir: Path) -> None:
    _runs.train_start(config, run_dir)


@hookimpl
def fmcore_step_end(step: int, metrics: dict[str, float], run_dir: Path) -> None:
    _runs.step_end(step, metrics, run_dir)


@hookimpl
def fmcore_train_end(summary: dict[str, Any], run_dir: Path) -> None:
    _runs.train_end(summary, run_dir)


@hookimpl
def fmcore_federated_round_end(
    server_round: int, metrics: dict[str, float], run_dir: Path, config: Any
) -> None:
    _runs.round_end(server_round, metrics, run_dir, config)
