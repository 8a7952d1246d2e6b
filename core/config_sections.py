"""Typed schemas of the config sections the core reads (``run``, ``trainer``, ``eval``, ``embed``)
and of the built-in loggers' settings (``logger.tensorboard``, ``logger.mlflow``).

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
VOTINGS = ("weighted", "uniform")
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
            at_least(f"trainer.{key}", getattr(self, key), 1)
        for key in ("betas", "ema_momentum"):
            if len(getattr(self, key)) != 2:
                raise ConfigError(f"trainer.{key} must be two numbers, not {getattr(self, key)}")


@dataclass
class EvalSection:
    """``eval`` without a protocol chosen: train.yaml's periodic-evaluation switch."""

    every_steps: int = MISSING

    def __post_init__(self) -> None:
        at_least("eval.every_steps", self.every_steps, 0)


@dataclass
class FeatureEvalSection(EvalSection):
    """What the protocols on frozen features (knn, linear, svm, fewshot) share."""

    name: str = MISSING
    train_split: str = MISSING
    test_split: str = MISSING
    batch_size: int = MISSING
    features: str | None = MISSING
    l2_normalize: bool = MISSING
    group_by: str | None = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("eval.batch_size", self.batch_size, 1)


@dataclass
class KnnSection(FeatureEvalSection):
    k: int = MISSING
    temperature: float = MISSING
    voting: str = MISSING
    bootstrap: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("eval.k", self.k, 1)
        at_least("eval.bootstrap", self.bootstrap, 0)
        one_of("eval.voting", self.voting, VOTINGS)
        if self.temperature <= 0:
            raise ConfigError(f"eval.temperature must be above 0, not {self.temperature}")


@dataclass
class LinearSection(FeatureEvalSection):
    lrs: list[float] = MISSING
    val_fraction: float = MISSING
    epochs: int = MISSING
    probe_batch_size: int = MISSING
    weight_decay: float = MISSING
    bootstrap: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("eval.bootstrap", self.bootstrap, 0)
        if not self.lrs:
            raise ConfigError("eval.lrs must list at least one learning rate")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"eval.val_fraction must lie in (0, 1), not {self.val_fraction}")


@dataclass
class SvmSection(FeatureEvalSection):
    cs: list[float] = MISSING
    val_fraction: float = MISSING
    bootstrap: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("eval.bootstrap", self.bootstrap, 0)
        if not self.cs or min(self.cs) <= 0:
            raise ConfigError(f"eval.cs must list at least one C above 0, not {self.cs}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"eval.val_fraction must lie in (0, 1), not {self.val_fraction}")


@dataclass
class FewshotSection(FeatureEvalSection):
    shots: list[int] = MISSING
    seeds: list[int] = MISSING


@dataclass
class MilSection(EvalSection):
    name: str = MISSING
    embeddings: str | None = MISSING
    labels: str | None = MISSING
    train_split: str = MISSING
    test_split: str = MISSING
    test_fraction: float = MISSING
    epochs: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    hidden: int = MISSING
    attention_hidden: int = MISSING
    dropout: float = MISSING
    seed: int = MISSING
    bootstrap: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("eval.epochs", self.epochs, 1)
        at_least("eval.bootstrap", self.bootstrap, 0)
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"eval.test_fraction must lie in (0, 1), not {self.test_fraction}")


@dataclass
class BcSection(EvalSection):
    """``eval=bc``: a behaviour-cloning policy on frozen features (configs/eval/bc.yaml)."""

    name: str = MISSING
    train_split: str = MISSING
    val_split: str = MISSING
    test_split: str = MISSING
    batch_size: int = MISSING
    features: str | None = MISSING
    with_state: bool = MISSING
    hidden_dim: int = MISSING
    epochs: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    probe_batch_size: int = MISSING
    rollouts: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("batch_size", "hidden_dim", "epochs", "probe_batch_size"):
            at_least(f"eval.{key}", getattr(self, key), 1)
        at_least("eval.rollouts", self.rollouts, 0)
        if self.lr <= 0:
            raise ConfigError(f"eval.lr must be above 0, not {self.lr}")


@dataclass
class EmbedSection:
    """``embed``: what ``fmcore embed`` writes (configs/embed/default.yaml)."""

    out: str | None = MISSING
    split: str = MISSING
    features: str | None = MISSING
    batch_size: int = MISSING
    shard_size: int = MISSING

    def __post_init__(self) -> None:
        at_least("embed.batch_size", self.batch_size, 1)
        at_least("embed.shard_size", self.shard_size, 1)


@dataclass
class TensorBoardSection:
    """``logger.tensorboard``: the TensorBoard logger (configs/logger/tensorboard.yaml)."""

    dir: str = MISSING
    figures: bool = MISSING

    def __post_init__(self) -> None:
        not_empty("logger.tensorboard.dir", self.dir)


@dataclass
class MlflowSection:
    """``logger.mlflow``: the MLflow logger (configs/logger/mlflow.yaml)."""

    tracking_uri: str | None = MISSING
    experiment: str = MISSING
    run_name: str | None = MISSING
    figures: bool = MISSING
    encoder: bool = MISSING

    def __post_init__(self) -> None:
        not_empty("logger.mlflow.experiment", self.experiment)


SCHEMAS = {"run": RunSection, "trainer": TrainerSection, "embed": EmbedSection}
# The built-in loggers' settings; a third-party logger's section under logger stays free-form.
LOGGER_SCHEMAS = {"logger.tensorboard": TensorBoardSection, "logger.mlflow": MlflowSection}
EVAL_SCHEMAS = {
    "knn": KnnSection,
    "linear": LinearSection,
    "svm": SvmSection,
    "fewshot": FewshotSection,
    "mil": MilSection,
    "bc": BcSection,
}


def core_schemas(config: DictConfig) -> dict[str, type]:
    """The schemas of the sections the core reads; ``eval``'s is the chosen protocol's."""
    evaluation = config.get("eval")
    name = evaluation.get("name") if isinstance(evaluation, DictConfig) else None
    return {**SCHEMAS, "eval": EVAL_SCHEMAS.get(str(name), EvalSection), **LOGGER_SCHEMAS}


def type_sections(config: DictConfig, schemas: Mapping[str, type] | None = None) -> None:
    """Give the sections named in ``schemas`` (the core's by default; a dotted name for a nested
    section, ``logger.mlflow``) their types, in place, and run the schemas' checks. Keys a user
    added with ``+`` (``+run.note=...``) stay beside the typed ones, untyped."""
    for name, schema in (core_schemas(config) if schemas is None else schemas).items():
        section_config = OmegaConf.select(config, name)
        if section_config is None:
            continue
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
        parent, _, leaf = name.rpartition(".")
        (OmegaConf.select(config, parent) if parent else config)[leaf] = typed
        section(config, name, schema)  # runs the schema's checks now, not at the first step


def structured(values: DictConfig, schema: type[Section], name: str) -> Section:
    """The config node ``values`` (section ``name``) as ``schema``'s dataclass, each key typed
    by omegaconf and the schema's checks run: a wrong type, a missing key or a key the schema
    lacks fails naming ``name.<key>``."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), values)
        return OmegaConf.to_object(typed)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        raise _config_error(name, error) from error


def section(config: DictConfig, name: str, schema: type[Section]) -> Section:
    """Section ``name`` of a composed config as its dataclass (added keys left out); nested
    dataclass fields become their dataclasses too."""
    values = OmegaConf.to_container(
        OmegaConf.select(config, name), resolve=True, throw_on_missing=True
    )
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


def eval_section(config: DictConfig) -> EvalSection:
    """The ``eval`` section as the chosen protocol's dataclass (KnnSection for eval=knn, ...)."""
    return section(config, "eval", core_schemas(config)["eval"])


def _config_error(name: str, error: OmegaConfBaseException) -> ConfigError:
    key = getattr(error, "full_key", None) or ""
    reason = str(getattr(error, "msg", error)).splitlines()[0]
    return ConfigError(f"{name}.{key}: {reason}" if key else f"{name}: {reason}")


def at_least(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        word = "0 or more" if minimum == 0 else f"at least {minimum}"
        raise ConfigError(f"{key} must be {word}, not {value}")


def not_empty(key: str, value: str) -> None:
    if not value:
        raise ConfigError(f"{key} must not be empty")


def one_of(key: str, value: object, choices: tuple) -> None:
    if value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{key} must be one of {shown}, not '{value}'")
