"""The plugin module fmcore loads, registered in pyproject.toml as::

    [project.entry-points.fmcore]
    dermatology = "fmcore_dermatology.plugin"

It implements two provider hooks of ``fmcore.hookspecs``: the domain class, and the directory
holding its config group file ``domain/dermatology.yaml`` (shipped inside the package).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fmcore.api import Domain, hookimpl
from fmcore_dermatology.data import Dermatology


@hookimpl
def fmcore_domains() -> list[type[Domain]]:
    return [Dermatology]


@hookimpl
def fmcore_config_dirs() -> list[Path]:
    # A real directory on disk: the package is installed as files, not zipped.
    return [Path(str(files("fmcore_dermatology") / "configs"))]
