"""Flower's command-line programs (flwr, flower-supernode) of the environment fmcore runs in."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from fmcore.errors import FmcoreError


def flower_executable(name: str) -> str:
    """``name`` beside this Python (the Flower that fmcore's federated extra installed), else the
    one on PATH; an error naming the extra when neither exists."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise FmcoreError(f"{name} is not installed: pip install 'fmcore-ssl[federated]'")
    return found
