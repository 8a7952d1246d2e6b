"""Builds a run's parts from its resolved config: domain, encoder, method and views."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from torch import Tensor

from fmcore.backbones.trunk import Trunk
from fmcore.config import as_dict, unresolved_by_modality
from fmcore.domain import Domain
from fmcore.encoder import Encoder
from fmcore.errors import ConfigError, MissingPath
from fmcore.io import read_metadata
from fmcore.method import Method
from fmcore.modalities.base import Modality, TokenizerSettings
from fmcore.plugin_manager import Registry
from fmcore.pretrained import load_pretrained
from fmcore.run_files import (
    ENCODER_CONFIG_KEY,
    ENCODER_FILE,
    check_encoder_format,
    encoder_metadata,
)
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


def encoder_file(value: str | Path, key: str) -> Path:
    """``encoder.safetensors`` itself, or the one inside a run directory, named by the config
    key ``key``."""
    path = Path(str(value)).expanduser()
    if path.is_dir():
        path = path / ENCODER_FILE
    if not path.is_file():
        raise MissingPath(
            f"{key}={value}: no {ENCODER_FILE} there; give a run directory or an encoder file"
        )
    return path


def encoder_from_file(path: Path, registry: Registry, domain: Domain) -> Encoder:
    """The encoder saved at ``path`` (an ``encoder.safetensors``) for ``domain``'s data: the
    architecture its metadata describes, its weights loaded."""
    return encoder_from_state(load_file(str(path)), read_metadata(path), path, registry, domain)


def encoder_from_state(
    state: dict[str, Tensor],
    metadata: dict[str, str],
    path: Path,
    registry: Registry,
    domain: Domain,
) -> Encoder:
    """The encoder of an encoder file's ``metadata`` (read from ``path``) for ``domain``'s data,
    with the weights ``state``."""
    check_encoder_format(metadata, path)
    encoder_config = OmegaConf.create({"encoder": OmegaConf.create(metadata[ENCODER_CONFIG_KEY])})
    encoder = build_encoder(encoder_config, registry, domain)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(
            f"{path} does not fit the encoder its metadata describes: {error}"
        ) from error
    return encoder


def run_encoder_metadata(config: DictConfig, modality: str, step: int) -> dict[str, str]:
    """The encoder file metadata of a run's encoder after ``step`` steps, from its config."""
    return encoder_metadata(
        step=step,
        modality=modality,
        domain=str(config.domain.name),
        encoder_yaml=OmegaConf.to_yaml(config.encoder),
        data_yaml=OmegaConf.to_yaml(config.data),
        features=str(config.method.get("features") or "cls"),
    )


@dataclass
class Parts:
    domain: Domain
    modality: Modality
    method: Method
    views: ViewMaker


def build_parts(config: DictConfig, registry: Registry, fresh_start: bool = False) -> Parts:
    """The run's parts; ``fresh_start`` (a run's or a federation's first weights, not a resume
    or a site's round) loads ``init=`` into the encoder before the method copies it (teachers)."""
    unresolved = unresolved_by_modality(config)
    if unresolved:  # composed before the domain was known: the recipes would silently not apply
        raise ConfigError(
            f"{', '.join(unresolved)}.by_modality is unresolved: compose the config with its"
            " domain (domain=<name> or domain.name=<name>) so the modality's recipe applies"
        )
    domain = build_domain(config, registry)
    modality = registry.modality(domain.modality)
    encoder = build_encoder(config, registry, domain)
    if fresh_start and config.get("init"):
        load_pretrained(encoder, encoder_file(config.init, "init"))
    method = registry.method(config.method.name)(config.method, encoder, modality)
    teacher = config.method.get("teacher")
    if teacher:  # a frozen target model on disk (D-iGPT's), for the method to distil
        path = encoder_file(teacher, "method.teacher")
        method.attach_teacher(encoder_from_file(path, registry, domain))
    views = ViewMaker(
        modality,
        domain.sample_size,
        encoder.tokenizer.size_multiple,
        domain.view_steps(),
        domain.normalize,
        as_dict(config.data.get("views")),
        domain.to_unit,
    )
    return Parts(domain, modality, method, views)
