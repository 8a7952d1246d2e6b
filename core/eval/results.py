"""Where an evaluation's result goes: ``eval.json`` in its run directory, for every protocol."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fmcore.io import atomic_write_text
from fmcore.run_files import EVAL_FILE, timestamped_run_dir


def eval_run_dir(config: DictConfig) -> Path:
    if config.run.dir:
        return Path(str(config.run.dir))
    return timestamped_run_dir("eval", str(config.domain.name), str(config.eval.name))


def write_result(config: DictConfig, result: dict[str, Any]) -> dict[str, Any]:
    """Write ``result`` as ``eval.json`` into the run directory; returns it with its ``path``."""
    run_dir = eval_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / EVAL_FILE, json.dumps(result, indent=2) + "\n")
    return {**result, "path": str(run_dir / EVAL_FILE)}
