"""Registers SimCLR (entry point ``simclr`` in fmcore's pyproject.toml)."""

from fmcore import hookimpl
from fmcore.plugins.simclr.method import SimCLR


@hookimpl
def fmcore_methods() -> list[type[SimCLR]]:
    return [SimCLR]
