"""A federation's config: its words (with the default strategy) composed once, the
``federated`` section typed, and the engine schedule derived from them, so every saved
config.yaml shows the steps that really run."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig

from fmcore.config import (
    RESUME_MAY_CHANGE,
    ProvidesConfigDirs,
    compose,
    config_sources,
    refuse_resume_changes,
)
from fmcore.config_sections import at_least, one_of, section, type_sections
from fmcore.errors import ConfigError
from fmcore.federated.wire import WIRE_DTYPES
from fmcore.io import atomic_write_text
from fmcore.run_files import RUN_CONFIG_FILE

DEFAULT_STRATEGY = "federated=fedavg"
DERIVED_KEY = "trainer.max_steps"
#: The words a federation was started with, in its run directory: every site composes its
#: config from them, so a resume continues from them rather than from config.yaml alone.
WORDS_FILE = "federation_words.json"
FEDERATION_RESUME_MAY_CHANGE = (
    *(key for key in RESUME_MAY_CHANGE if key != DERIVED_KEY),
    "federated.rounds",
    "federated.round_timeout",
    "federated.connect_timeout",
)


@dataclass
class SecaggSection:
    num_shares: Any = MISSING  # an int > 2, or a float share of the round's sites
    reconstruction_threshold: Any = MISSING  # likewise
    max_weight: float = MISSING
    clipping_range: float = MISSING
    quantization_range: int = MISSING


@dataclass
class DpSection:
    clipping: str | None = MISSING
    noise_multiplier: float = MISSING
    args: dict[str, Any] = MISSING


@dataclass
class SimulationSection:
    cpus_per_site: float = MISSING
    gpus_per_site: float = MISSING


@dataclass
class FederatedSection:
    """``federated``: the schema of configs/federated/fedavg.yaml (which holds the defaults)."""

    strategy: str = MISSING
    strategy_args: dict[str, Any] = MISSING
    sites: int = MISSING
    rounds: int = MISSING
    local_steps: int = MISSING
    min_sites: int = MISSING
    max_failed_rounds: int = MISSING
    fraction: float = MISSING
    round_timeout: float = MISSING
    connect_timeout: float = MISSING
    evaluate_every: int = MISSING
    update_dtype: str = MISSING
    global_dtype: str = MISSING
    site_names: list[str] | None = MISSING
    site_data: list[str | None] | None = MISSING
    site_domains: list[str | None] | None = MISSING
    audit: bool = MISSING
    site_overrides: list[Any] | None = MISSING
    partition: str = MISSING
    secure_aggregation: bool = MISSING
    secagg: SecaggSection = field(default_factory=SecaggSection)
    dp: DpSection = field(default_factory=DpSection)
    simulation: SimulationSection = field(default_factory=SimulationSection)

    def __post_init__(self) -> None:
        for key in ("sites", "rounds", "local_steps", "min_sites", "max_failed_rounds"):
            at_least(f"federated.{key}", getattr(self, key), 1)
        at_least("federated.evaluate_every", self.evaluate_every, 0)
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"federated.fraction must lie in (0, 1], not {self.fraction}")
        if self.min_sites > self.sites:
            raise ConfigError(
                f"federated.min_sites={self.min_sites} is more than federated.sites={self.sites}"
            )
        one_of("federated.update_dtype", self.update_dtype, WIRE_DTYPES)
        one_of("federated.global_dtype", self.global_dtype, WIRE_DTYPES)
        for key in ("site_names", "site_data", "site_domains", "site_overrides"):
            listed = getattr(self, key)
            if listed is not None and len(listed) != self.sites:
                raise ConfigError(
                    f"federated.{key} lists {len(listed)} entries for federated.sites={self.sites}"
                )


def federated_section(config: DictConfig) -> FederatedSection:
    return section(config, "federated", FederatedSection)


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
    type_sections(config, {"federated": FederatedSection})
    federated = config.federated
    config.trainer.max_steps = int(federated.rounds) * int(federated.local_steps)
    return config


def save_words(run_dir: Path, words: Sequence[str]) -> None:
    atomic_write_text(run_dir / WORDS_FILE, json.dumps(list(words), indent=1) + "\n")


def federation_to_run(
    words: Sequence[str], plugins: ProvidesConfigDirs
) -> tuple[DictConfig, list[str]]:
    """The federation's config and words. ``resume=true`` on a run directory holding saved
    words continues with them, plus the command's words a resume may change (where and how
    long it runs); any other change is refused, as ``fmcore train resume=true`` refuses it."""
    config = compose_federation(federation_words(words), plugins)
    run_dir = Path(str(config.run.dir)) if config.run.dir else None
    if not (config.resume and run_dir is not None and (run_dir / WORDS_FILE).is_file()):
        return config, federation_words(words)
    if not (run_dir / RUN_CONFIG_FILE).is_file():
        raise ConfigError(
            f"resume=true but {run_dir} holds no federation that reached its first round (no"
            f" {RUN_CONFIG_FILE}); start it again without resume=true"
        )
    refuse_resume_changes(
        words,
        config_sources(plugins).groups(),
        run_dir / RUN_CONFIG_FILE,
        FEDERATION_RESUME_MAY_CHANGE,
    )
    saved = json.loads((run_dir / WORDS_FILE).read_text())
    allowed = [
        word for word in words if word.split("=", 1)[0].lstrip("+") in FEDERATION_RESUME_MAY_CHANGE
    ]
    resumed = [*saved, *allowed]
    return compose_federation(resumed, plugins), resumed


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
