"""``logger=tensorboard``: a run's metrics as TensorBoard scalars, its figures as images.

Every step's metrics (the names and values of metrics.jsonl, periodic ``eval/*`` included) go to
event files under ``<run dir>/<logger.tensorboard.dir>`` through torch's ``SummaryWriter``; at the
end of training, ``fmcore report``'s figures are added as images (``report/<figure>``). Under
``fmcore federate`` the server logs each round's aggregated metrics (those of rounds.jsonl) at
the round's number in the federation's directory, and each site's rounds of local training
append to the event files of the site's own run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmcore.api import hookimpl, report_figures
from fmcore.plugins.loggers.selection import OpenLoggers, require, scalars

LOGGER = "tensorboard"


class Writer:
    """One run's open event file, and whether the report's figures go in at the end."""

    def __init__(self, config: Any, run_dir: Path, settings: dict[str, Any]) -> None:
        summary_writer = require("torch.utils.tensorboard", LOGGER).SummaryWriter
        self.events = summary_writer(log_dir=str(run_dir / settings["dir"]))
        self.figures = bool(settings["figures"])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in scalars(metrics).items():
            self.events.add_scalar(name, value, global_step=step)

    def flush(self) -> None:
        self.events.flush()

    def close(self, run_dir: Path, step: int, training: bool) -> None:
        if training and self.figures:
            for name, figure in report_figures(run_dir).items():
                self.events.add_figure(f"report/{Path(name).stem}", figure, step, close=False)
        self.events.close()


_writers = OpenLoggers(LOGGER, Writer, ("torch.utils.tensorboard",))


@hookimpl
def fmcore_train_start(config: Any, run_dir: Path) -> None:
    _writers.train_start(config, run_dir)


@hookimpl
def fmcore_step_end(step: int, metrics: dict[str, float], run_dir: Path) -> None:
    _writers.step_end(step, metrics, run_dir)


@hookimpl
def fmcore_train_end(summary: dict[str, Any], run_dir: Path) -> None:
    _writers.train_end(summary, run_dir)


@hookimpl
def fmcore_federated_round_end(
    server_round: int, metrics: dict[str, float], run_dir: Path, config: Any
) -> None:
    _writers.round_end(server_round, metrics, run_dir, config)
