"""A federation's config: its words (with the default strategy) composed once, and the engine
schedule derived from them, so every saved config.yaml shows the steps that really run."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from omegaconf import DictConfig

from fmcore.config import ProvidesConfigDirs, compose, config_sources
from fmcore.errors import ConfigError

DEFAULT_STRATEGY = "federated=fedavg"
DERIVED_KEY = "trainer.max_steps"


def federation_words(words: Sequence[str]) -> list[str]:
    """The command's words, with the default strategy unless one is chosen."""
    if any(word.split("=", 1)[0] == "federated" for word in words):
        return list(words)
    return [DEFAULT_STRATEGY, *words]


def compose_federation(words: Sequence[str], plugins: ProvidesConfigDirs) -> DictConfig:
    """The federation's (or one site's) config, with ``trainer.max_steps`` set to
    ``federated.rounds x federated.local_steps``: every site's schedules span all rounds."""
    if any(word.split("=", 1)[0].lstrip("+") == DERIVED_KEY for word in words):
        raise ConfigError(
            f"{DERIVED_KEY} is derived in a federation (federated.rounds x"
            " federated.local_steps): set those instead"
        )
    config = compose(federation_words(words), config_sources(plugins))
    federated = config.federated
    config.trainer.max_steps = int(federated.rounds) * int(federated.local_steps)
    return config


class ComposedConfigs:
    """:func:`compose_federation` once per distinct word list, a fresh copy on every call: a
    ClientApp answers every round's messages with the same federation and site words."""

    def __init__(self, plugins: Callable[[], ProvidesConfigDirs]) -> None:
        self.plugins = plugins  # called on first use: the plugins load when a message comes
        self._composed: dict[tuple[str, ...], DictConfig] = {}

    def __call__(self, words: Sequence[str]) -> DictConfig:
        key = tuple(words)
        if key not in self._composed:
            self._composed[key] = compose_federation(key, self.plugins())
        return copy.deepcopy(self._composed[key])
