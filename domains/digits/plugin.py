"""Registers the digits domain (entry point ``digits`` in fmcore's pyproject.toml)."""

from fmcore import hookimpl
from fmcore.domains.digits.data import Digits


@hookimpl
def fmcore_domains() -> list[type[Digits]]:
    return [Digits]
