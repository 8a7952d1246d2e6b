"""Errors fmcore raises for bad input, each naming the file, key or package and what to do."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path


class FmcoreError(Exception):
    """Base of errors in the user's input, not bugs: the CLI prints them without a traceback."""


class BadSample(FmcoreError):
    """A sample that cannot be used (corrupt, truncated, empty). Training skips and counts it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class NoUsableSamples(FmcoreError):
    """Every sample of a run was bad, or none was found."""


class MissingExtra(FmcoreError):
    """Optional packages a domain needs are not installed; names the command that installs them."""

    def __init__(self, what: str, modules: Iterable[str], install: str) -> None:
        modules = sorted(modules)
        super().__init__(
            f"{what} needs the package(s) {', '.join(modules)}, which are not installed:"
            f" run {install}"
        )
        self.install = install


def extra_install_command(extra: str) -> str:
    """The pip command that installs fmcore's optional ``extra``: the requirements the installed
    distribution declares for it, named one by one, because "fmcore" on the package index is an
    unrelated project (``pip install "fmcore[extra]"`` could fetch it)."""
    distribution = metadata.packages_distributions().get("fmcore", ["fmcore"])[0]
    marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
    wanted = [
        requirement.split(";", 1)[0].strip()
        for requirement in metadata.requires(distribution) or []
        if marker.search(requirement)
    ]
    if not wanted:
        raise ValueError(f"the installed fmcore declares no extra '{extra}'")
    return "pip install " + " ".join(shlex.quote(requirement) for requirement in wanted)


class ConfigError(FmcoreError, ValueError):
    """A wrong config key, value or group choice (a ValueError, so callers may catch either)."""


class MissingPath(ConfigError, FileNotFoundError):
    """A configured file or directory (data.root, a saved config) does not exist."""


class UnknownChoice(ConfigError):
    def __init__(self, kind: str, name: str, choices: Iterable[str]) -> None:
        choices = sorted(choices)
        super().__init__(
            f"unknown {kind} '{name}'; valid choices: {', '.join(choices) if choices else '(none)'}"
        )
        self.choices = choices
