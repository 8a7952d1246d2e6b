"""Errors fmcore raises for bad input, each naming the file, key or package and what to do."""

from __future__ import annotations

from collections.abc import Iterable
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
