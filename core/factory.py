"""Builds a run's parts from its resolved config: domain, encoder, method and views."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from fmcore.backbones.trunk import Trunk
from fmcore.config import as_dict, unresolved_by_modality
from fmcore.domain import Domain
from fmcore.encoder import Encoder
from fmcore.errors import ConfigError
from fmcore.method import Method
from fmcore.modalities.base import Modality, TokenizerSettings
from fmcore.plugin_manager import Registry
from fmcore.view_maker import ViewMaker


def cache_dir(config: DictConfig) -> Path:
    configured = config.run.get("cache_dir") or os.environ.get("FMCORE_CACHE")
    return Path(configured or Path.home() / ".cache" / "fmcore").expanduser()


def build_domain(config: DictConfig, registry: Registry) -> Domain:
    domain_class = registry.domain(config.domain.name)
    domain_class.check_requirements()
    return domain_class(config.data, cache_dir(config))


def build_encoder(config: DictConfig, registry: Registry, domain: Domain) -> Encoder:
    modality = registry.modality(domain.modality)
    settings = TokenizerSettings(
        embed_dim=int(config.encoder.embed_dim),
        sample_size=domain.sample_size,
        channels=domain.channels,
        options=as_dict(config.encoder.tokenizer),
    )
    tokenizer = modality.build_tokenizer(settings)
    name = str(config.encoder.trunk)
    trunk = registry.trunk(name)(config.encoder)
    if not isinstance(trunk, Trunk):
        raise ConfigError(
            f"encoder.trunk={name}: its factory returned a {type(trunk).__name__}, not an"
            " fmcore Trunk (fmcore.api.Trunk)"
        )
    return Encoder(tokenizer, trunk)


@dataclass
class Parts:
    domain: Domain
    modality: Modality
    method: Method
    views: ViewMaker


def build_parts(config: DictConfig, registry: Registry) -> Parts:
    unresolved = unresolved_by_modality(config)
    if unresolved:  # composed before the domain was known: the recipes would silently not apply
        raise ConfigError(
            f"{', '.join(unresolved)}.by_modality is unresolved: compose the config with its"
            " domain (domain=<name> or domain.name=<name>) so the modality's recipe applies"
        )
    domain = build_domain(config, registry)
    modality = registry.modality(domain.modality)
    encoder = build_encoder(config, registry, domain)
    method = registry.method(config.method.name)(config.method, encoder, modality)
    views = ViewMaker(
        modality,
        domain.sample_size,
        encoder.tokenizer.size_multiple,
        domain.view_steps(),
        domain.normalize,
        as_dict(config.data.get("views")),
    )
    return Parts(domain, modality, method, views)
