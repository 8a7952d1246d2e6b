"""Registers MAE (entry point ``mae`` in fmcore's pyproject.toml) and draws its reconstructions
at every checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

from fmcore import hookimpl
from fmcore.plugins.mae.method import MAE


@hookimpl
def fmcore_methods() -> list[type[MAE]]:
    return [MAE]


@hookimpl
def fmcore_checkpoint_saved(step: int, path: Path, run_dir: Path) -> None:
    """Save the reconstruction picture of an MAE run beside its checkpoints (rank 0 only).

    The picture is a diagnostic: if it cannot be drawn, the run says why and trains on.
    """
    if not (Path(run_dir) / "config.yaml").is_file():
        return
    from fmcore.plugins.mae.recon_grid import render_checkpoint

    try:
        render_checkpoint(Path(run_dir), Path(path))
    except Exception as error:  # never let a picture stop a run
        print(
            f"mae: no reconstruction picture for step {step}: {type(error).__name__}: {error}",
            file=sys.stderr,
            flush=True,
        )
