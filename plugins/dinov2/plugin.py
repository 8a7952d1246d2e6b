"""Registers DINOv2 (entry point ``dinov2`` in fmcore's pyproject.toml)."""

from fmcore import hookimpl
from fmcore.plugins.dinov2.method import DINOv2


@hookimpl
def fmcore_methods() -> list[type[DINOv2]]:
    return [DINOv2]
