"""Registers MAE (entry point ``mae`` in fmcore's pyproject.toml) and draws its reconstructions
at every checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fmcore import hookimpl
from fmcore.domain import Domain
from fmcore.io import write_png
from fmcore.method import Method
from fmcore.plugins.mae.method import MAE


@hookimpl
def fmcore_methods() -> list[type[MAE]]:
    return [MAE]


@hookimpl
def fmcore_checkpoint_saved(
    step: int, path: Path, run_dir: Path, method: Method, domain: Domain, config: Any
) -> None:
    """Save the reconstruction picture of an MAE run beside its checkpoints (rank 0 only).

    The picture is a diagnostic: if it cannot be drawn, the run says why and trains on.
    """
    if not isinstance(method, MAE):
        return
    from fmcore.plugins.mae.recon_grid import draw_reconstructions, picture_path

    try:
        image = draw_reconstructions(method, domain, int(config.run.seed))
        if image is not None:
            write_png(picture_path(Path(run_dir), Path(path)), image)
    except Exception as error:  # never let a picture stop a run
        print(
            f"mae: no reconstruction picture for step {step}: {type(error).__name__}: {error}",
            file=sys.stderr,
            flush=True,
        )
