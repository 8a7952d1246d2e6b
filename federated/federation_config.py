"""A federation's config: its words (with the default strategy) composed once, and the engine
schedule derived from them, so every saved config.yaml shows the steps that really run."""

from __future__ import annotations

from collections.abc import Sequence

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
