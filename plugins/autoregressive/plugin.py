"""Registers AIM and ARM (entry point ``autoregressive`` in fmcore's pyproject.toml)."""

from fmcore import hookimpl
from fmcore.method import Method
from fmcore.plugins.autoregressive.aim import AIM
from fmcore.plugins.autoregressive.arm import ARM


@hookimpl
def fmcore_methods() -> list[type[Method]]:
    return [AIM, ARM]
