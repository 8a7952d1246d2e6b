"""What the built-in loggers share: whether a run chose a logger, its optional library, and the
open loggers of each run directory that the lifecycle hooks feed."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from fmcore.api import ConfigError, as_dict, process_rank


def chosen_settings(config: Any, logger: str) -> dict[str, Any] | None:
    """``logger.<logger>``'s settings when the run chose that logger; None otherwise."""
    section = config.get("logger")
    if section is None or section.get(logger) is None:
        return None
    return as_dict(section[logger])


def require(module: str, logger: str) -> ModuleType:
    """Import the logger's library, or fail in one line naming the extra that installs it (each
    built-in logger's extra bears its name)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"logger={logger} cannot import {module} ({reason}): pip install 'fmcore-ssl[{logger}]'"
        ) from error


def scalars(metrics: dict[str, float]) -> dict[str, float]:
    """A step's metrics as named scalars (the ``step`` count is where they are logged)."""
    return {name: float(value) for name, value in metrics.items() if name != "step"}


class RunLogger(Protocol):
    """One run directory's open logger."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def flush(self) -> None: ...

    def close(self, run_dir: Path, step: int, training: bool) -> None:
        """Finish; a training run (not a federation's server) also logs its figures."""
        ...


# (config, run directory, the logger's settings) -> the run's open logger
OpenLogger = Callable[[Any, Path, dict[str, Any]], RunLogger]


class OpenLoggers:
    """The hooks' work for one kind of logger: each run directory's open logger (several runs
    may train in one process: a federated simulation's sites, a test), opened only where the
    run chose the logger."""

    def __init__(self, logger: str, open_logger: OpenLogger, libraries: tuple[str, ...]) -> None:
        self.logger = logger
        self.open_logger = open_logger
        self.libraries = libraries  # imported on every rank before rank 0 opens the logger
        self.by_run: dict[Path, RunLogger] = {}

    def train_start(self, config: Any, run_dir: Path) -> None:
        """Open the chosen logger on rank 0. Its libraries are imported on every rank first:
        a missing extra stops every process, not rank 0 alone while the others wait for it in
        their first collective."""
        settings = chosen_settings(config, self.logger)
        if settings is None:
            return
        for library in self.libraries:
            require(library, self.logger)
        if process_rank() == 0:
            self.by_run[run_dir] = self.open_logger(config, run_dir, settings)

    def step_end(self, step: int, metrics: dict[str, float], run_dir: Path) -> None:
        if run_dir in self.by_run:
            self.by_run[run_dir].log(step, metrics)

    def train_end(self, summary: dict[str, Any], run_dir: Path) -> None:
        opened = self.by_run.pop(run_dir, None)
        if opened is not None:
            opened.close(run_dir, int(summary["steps"]), training=True)

    def round_end(
        self, server_round: int, metrics: dict[str, float], run_dir: Path, config: Any
    ) -> None:
        """A federation's round: opened at its first, closed after ``federated.rounds``."""
        settings = chosen_settings(config, self.logger)
        if settings is None or process_rank() != 0:
            return
        opened = self.by_run.get(run_dir) or self.open_logger(config, run_dir, settings)
        opened.log(server_round, metrics)
        if server_round >= int(config.federated.rounds):
            self.by_run.pop(run_dir, None)
            opened.close(run_dir, server_round, training=False)
        else:
            self.by_run[run_dir] = opened
            opened.flush()
