"""Typed schemas of the config sections the core reads: ``run`` and ``trainer``.

Defaults stay in ``configs/train.yaml`` (one place); a schema gives each key its type, so a
composed config has ints where ints belong (``trainer.max_steps=1e3`` or ``=ten`` fails when the
config is composed, naming the key) and the engine reads a dataclass instead of casting
``DictConfig`` values. Plugins' own sections (``data``, ``method``) stay free-form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, is_dataclass
from typing import TypeVar, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fmcore.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")
PROGRESS_MODES = ("auto", "bar", "lines", "none")
LR_SCALINGS = (None, "linear", "sqrt")
Section = TypeVar("Section")


@dataclass
class RunSection:
    dir: str | None = MISSING
    seed: int = MISSING
    cache_dir: str | None = MISSING


@dataclass
class TrainerSection:
    max_steps: int = MISSING
    batch_size: int = MISSING
    grad_accum_steps: int = MISSING
    num_workers: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    compile: bool = MISSING
    lr: float = MISSING
    lr_scaling: str | None = MISSING
    lr_reference_batch: int = MISSING
    min_lr: float = MISSING
    warmup_steps: int = MISSING
    warmup_fraction: float | None = MISSING
    weight_decay: float = MISSING
    weight_decay_end: float = MISSING
    betas: list[float] = MISSING
    clip_grad: float | None = MISSING
    ema_momentum: list[float] = MISSING
    log_every: int = MISSING
    checkpoint_every: int = MISSING
    keep_checkpoints: int = MISSING
    progress: str = MISSING

    def __post_init__(self) -> None:
        one_of("trainer.precision", self.precision, PRECISIONS)
        one_of("trainer.progress", self.progress, PROGRESS_MODES)
        one_of("trainer.lr_scaling", self.lr_scaling, LR_SCALINGS)
        for key in ("max_steps", "batch_size", "grad_accum_steps", "log_every", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be at least 1, not {getattr(self, key)}")
        for key in ("betas", "ema_momentum"):
            if len(getattr(self, key)) != 2:
                raise ConfigError(f"trainer.{key} must be two numbers, not {getattr(self, key)}")


SCHEMAS = {"run": RunSection, "trainer": TrainerSection}


def type_sections(config: DictConfig, schemas: Mapping[str, type] = SCHEMAS) -> None:
    """Give the sections named in ``schemas`` (the core's by default) their types, in place, and
    run the schemas' checks. Keys a user added with ``+`` (``+run.note=...``) stay beside the
    typed ones, untyped."""
    for name, schema in schemas.items():
        if name not in config:
            continue
        section_config = config[name]
        known = [key for key in section_config if key in schema.__dataclass_fields__]
        try:
            typed = OmegaConf.merge(
                OmegaConf.structured(schema), OmegaConf.masked_copy(section_config, known)
            )
        except OmegaConfBaseException as error:
            raise _config_error(name, error) from error
        with open_dict(typed):
            for key in section_config:
                if key not in schema.__dataclass_fields__:
                    typed[key] = section_config[key]
        config[name] = typed
        section(config, name, schema)  # runs the schema's checks now, not at the first step


def section(config: DictConfig, name: str, schema: type[Section]) -> Section:
    """Section ``name`` of a composed config as its dataclass (added keys left out); nested
    dataclass fields become their dataclasses too."""
    values = OmegaConf.to_container(config[name], resolve=True, throw_on_missing=True)
    return _build(schema, values)  # type: ignore[arg-type]


def _build(schema: type[Section], values: dict) -> Section:
    hints = get_type_hints(schema)
    fields = {}
    for key in schema.__dataclass_fields__:  # type: ignore[attr-defined]
        value = values[key]
        if is_dataclass(hints[key]) and isinstance(value, dict):
            value = _build(hints[key], value)
        fields[key] = value
    return schema(**fields)


def trainer_section(config: DictConfig) -> TrainerSection:
    return section(config, "trainer", TrainerSection)


def _config_error(name: str, error: OmegaConfBaseException) -> ConfigError:
    key = getattr(error, "full_key", None) or ""
    reason = str(getattr(error, "msg", error)).splitlines()[0]
    return ConfigError(f"{name}.{key}: {reason}" if key else f"{name}: {reason}")


def one_of(key: str, value: object, choices: tuple) -> None:
    if value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{key} must be one of {shown}, not '{value}'")
