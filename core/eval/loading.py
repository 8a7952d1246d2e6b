"""The encoder to evaluate: a trained one (``fmcore.encoder_source``: a run directory, an
``encoder.safetensors``, a training checkpoint or a federated round), or a random one.

An exported encoder carries its encoder and data config as YAML in the safetensors metadata
(``fmcore.run_files.encoder_metadata``), so ``checkpoint=<file>`` rebuilds exactly the trained
architecture without the run's ``config.yaml``; a checkpoint or a round gets the same metadata
from its run's config. ``checkpoint=random`` builds the configured
``encoder=`` size with the run seed: the baseline a pretraining run must beat;
``checkpoint=pixels`` scores the normalised input itself, the other baseline. Build the random
one with the method's ``method=`` option too, so its encoder keys (LayerScale, ...) give the init
that method starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from fmcore.config import as_dict, parse_overrides
from fmcore.domain import Domain
from fmcore.encoder import Encoder, feature_kind
from fmcore.encoder_source import EncoderSource, read_encoder_source
from fmcore.errors import ConfigError, MissingPath
from fmcore.eval.features import PIXELS, RawPixels
from fmcore.factory import build_domain, build_encoder, encoder_from_state
from fmcore.plugin_manager import Registry
from fmcore.run_files import (
    DATA_CONFIG_KEY,
    DOMAIN_KEY,
    ENCODER_CONFIG_KEY,
    ENCODER_FILE,
    FEATURES_KEY,
    check_encoder_format,
)

RANDOM = "random"
BASELINES = (RANDOM, PIXELS)


@dataclass
class LoadedEncoder:
    encoder: Encoder | RawPixels
    domain: Domain
    config: DictConfig  # the config with the checkpoint's encoder (and data) sections
    checkpoint: str  # "random", "pixels" or the resolved encoder file
    metadata: dict[str, str]

    @property
    def encoder_config(self) -> dict | None:
        """The evaluated encoder's config section; None for the raw-pixel baseline."""
        return None if self.checkpoint == PIXELS else as_dict(self.config.encoder)

    def feature_kind(self, requested: str | None, key: str) -> str:
        """The pooling of the features to evaluate: ``requested`` (the command's ``key``) when
        set, else the one the trained method declared its own (``method.features``, kept in the
        encoder's metadata), else the configured method's (a random encoder), else ``cls``."""
        if self.checkpoint == PIXELS:
            return PIXELS
        if requested:
            return feature_kind(requested, key)
        if self.checkpoint == RANDOM:
            return feature_kind(
                (self.config.get("method") or {}).get("features"), "method.features"
            )
        return feature_kind(self.metadata.get(FEATURES_KEY), f"{FEATURES_KEY} in the encoder file")


def encoder_source(checkpoint: str, registry: Registry, domain: str) -> EncoderSource:
    """The trained encoder ``checkpoint=`` names (``domain``: the evaluated one)."""
    try:
        return read_encoder_source(checkpoint, registry, domain, f"checkpoint={checkpoint}")
    except MissingPath as error:
        raise MissingPath(
            f"{error}; or checkpoint={RANDOM} for a randomly initialised encoder,"
            f" checkpoint={PIXELS} for the raw input"
        ) from None


def checkpoint_config(
    config: DictConfig, metadata: dict[str, str], path: Path, words: Sequence[str] = ()
) -> DictConfig:
    """``config`` with the encoder section of the checkpoint, and its data section when the
    evaluated domain is the trained one; ``data.*`` words of the command line still apply on top
    (another ``data.root`` with the same preprocessing)."""
    check_encoder_format(metadata, path)
    config = config.copy()
    with open_dict(config):
        config.encoder = OmegaConf.create(metadata[ENCODER_CONFIG_KEY])
        if DATA_CONFIG_KEY in metadata and metadata.get(DOMAIN_KEY) == str(config.domain.name):
            config.data = OmegaConf.create(metadata[DATA_CONFIG_KEY])
            groups = ("encoder", "domain", "method", "eval")
            for key, value, _ in parse_overrides(words, groups).values:
                if key.startswith("data."):
                    OmegaConf.update(config, key, value, merge=True, force_add=True)
    return config


def load_encoder(
    config: DictConfig, registry: Registry, words: Sequence[str] = ()
) -> LoadedEncoder:
    """Build the domain and the encoder named by ``config.checkpoint``, in eval mode."""
    checkpoint = str(config.checkpoint) if config.get("checkpoint") is not None else None
    if not checkpoint:
        raise ConfigError(
            f"set checkpoint=<run dir, {ENCODER_FILE}, checkpoint or round file>,"
            f" checkpoint={RANDOM} or checkpoint={PIXELS}"
        )
    if checkpoint == PIXELS:
        return LoadedEncoder(RawPixels(), build_domain(config, registry), config, PIXELS, {})
    if checkpoint == RANDOM:
        domain = build_domain(config, registry)
        torch.manual_seed(int(config.run.seed))  # the same encoder every time
        encoder = build_encoder(config, registry, domain)
        return LoadedEncoder(encoder.eval(), domain, config, RANDOM, {})
    source = encoder_source(checkpoint, registry, str(config.domain.name))
    config = checkpoint_config(config, source.metadata, source.path, words)
    domain = build_domain(config, registry)
    encoder = encoder_from_state(source.state, source.metadata, source.path, registry, domain)
    return LoadedEncoder(encoder.eval(), domain, config, str(source.path), source.metadata)
