"""Registers I-JEPA (entry point ``ijepa`` in fmcore's pyproject.toml)."""

from fmcore import hookimpl
from fmcore.plugins.ijepa.method import IJEPA


@hookimpl
def fmcore_methods() -> list[type[IJEPA]]:
    return [IJEPA]
