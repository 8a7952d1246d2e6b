"""Registers AIM, ARM and D-iGPT (entry point ``autoregressive`` in fmcore's pyproject.toml)."""

from fmcore import hookimpl
from fmcore.method import Method
from fmcore.plugins.autoregressive.aim import AIM
from fmcore.plugins.autoregressive.arm import ARM
from fmcore.plugins.autoregressive.digpt import DiGPT


@hookimpl
def fmcore_methods() -> list[type[Method]]:
    return [AIM, ARM, DiGPT]
