"""The encoder in whatever a run left behind, as the weights and metadata of an encoder file.

``fmcore eval``, ``fmcore embed`` and ``fmcore export`` take any of:

- an encoder file (``encoder.safetensors``, ``run_files.ENCODER_FORMAT``), or a run directory
  holding one;
- a training checkpoint: ``checkpoints/step_N/`` or its ``model.safetensors``, or a run's
  ``checkpoints/`` folder or a run directory without an encoder file (its newest complete one);
- a federated round file ``rounds/round_NNNN.safetensors``, or a federated run directory or its
  ``rounds/`` folder (the newest round).

A checkpoint or a round holds the method's state, not the encoder: the method is rebuilt from the
run's ``config.yaml`` and its ``export_encoder()`` says which of its modules the encoder is, so a
checkpoint yields what the trainer writes into ``encoder.safetensors`` (DINOv2's and I-JEPA's
EMA teacher, the student elsewhere), and the metadata is the trainer's too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from fmcore.encoder import Encoder
from fmcore.engine.checkpoint import MODEL_FILE, TRAINER_JSON, Checkpoint, CheckpointStore
from fmcore.errors import ConfigError, MissingPath
from fmcore.factory import (
    build_domain,
    build_parts,
    encoder_from_state,
    run_encoder_metadata,
)
from fmcore.io import read_metadata
from fmcore.method import Method
from fmcore.plugin_manager import Registry
from fmcore.run_files import (
    CHECKPOINTS_DIR,
    DATA_CONFIG_KEY,
    DOMAIN_KEY,
    ENCODER_CONFIG_KEY,
    ENCODER_FILE,
    ENCODER_FORMAT,
    FORMAT_KEY,
    ROUND_FORMAT,
    ROUND_KEY,
    ROUNDS_DIR,
    RUN_CONFIG_FILE,
    SERVER_OPTIMIZER_FORMAT,
    SHARED_GROUP,
    SITES_DIR,
    check_encoder_format,
    domain_group,
    round_files,
    write_encoder,
)

WHAT_IS_READ = (
    "give a run directory, an encoder.safetensors, a training checkpoint (checkpoints/step_N)"
    " or a federated round file (rounds/round_NNNN.safetensors)"
)


@dataclass(frozen=True)
class EncoderSource:
    """An encoder's weights and the metadata its encoder file carries (``encoder_metadata``)."""

    path: Path  # the file the weights were read from
    state: dict[str, Tensor]
    metadata: dict[str, str]

    def write(self, out: Path) -> None:
        """Save it as a standalone encoder file, like a run's ``encoder.safetensors``."""
        write_encoder(self.state, out, self.metadata)

    def encoder(self, registry: Registry) -> Encoder:
        """The encoder, built for the domain and data it was trained on, its weights loaded."""
        config = OmegaConf.create(
            {
                "domain": {"name": self.metadata[DOMAIN_KEY]},
                "data": OmegaConf.create(self.metadata[DATA_CONFIG_KEY]),
                "run": {},
            }
        )
        domain = build_domain(config, registry)
        return encoder_from_state(self.state, self.metadata, self.path, registry, domain)


def read_encoder_source(
    value: str | Path, registry: Registry, domain: str | None = None, named: str | None = None
) -> EncoderSource:
    """The encoder at ``value``; ``named`` is how errors name it (the path by default, e.g.
    ``checkpoint=<path>``). ``domain`` picks a domain's tokenizer from a round of a federation
    whose sites hold several domains."""
    path = Path(str(value)).expanduser()
    named = named or str(value)
    if path.is_dir():
        path = _file_in_directory(path, named)
    elif not path.is_file():
        raise MissingPath(f"{named}: no such file or directory; {WHAT_IS_READ}")
    metadata = _metadata(path)
    kind = metadata.get(FORMAT_KEY, "")
    family = kind.partition("/")[0]  # fmcore.encoder, fmcore.federated
    if ENCODER_CONFIG_KEY in metadata or family == ENCODER_FORMAT.partition("/")[0]:
        check_encoder_format(metadata, path)
        return EncoderSource(path, _tensors(path), metadata)
    if kind == ROUND_FORMAT:
        return _from_round(path, metadata, registry, domain)
    if kind == SERVER_OPTIMIZER_FORMAT:
        raise ConfigError(
            f"{path} holds the federation server's optimizer state, not weights: give the"
            " round file beside it (round_<NNNN>.safetensors)"
        )
    if family == ROUND_FORMAT.partition("/")[0]:
        raise ConfigError(
            f"{path} is a federated round file of format {kind} and this fmcore reads"
            f" {ROUND_FORMAT}"
        )
    if path.name == MODEL_FILE and (path.parent / TRAINER_JSON).is_file():
        return _from_checkpoint(Checkpoint(path.parent), registry)
    raise ConfigError(
        f"{path} is a safetensors file but neither an fmcore encoder, a training checkpoint's"
        f" {MODEL_FILE} nor a federated round file (its metadata format: {kind or 'none'});"
        f" {WHAT_IS_READ}"
    )


def _file_in_directory(directory: Path, named: str) -> Path:
    """The weights file a directory stands for: its encoder file, else its newest checkpoint
    or round."""
    if (directory / ENCODER_FILE).is_file():
        return directory / ENCODER_FILE
    if (directory / TRAINER_JSON).is_file():  # a checkpoint directory
        return directory / MODEL_FILE
    rounds = round_files(directory / ROUNDS_DIR) or round_files(directory)
    if rounds:
        return rounds[max(rounds)]
    checkpoint = (
        CheckpointStore(directory / CHECKPOINTS_DIR).latest() or CheckpointStore(directory).latest()
    )
    if checkpoint is not None:
        return checkpoint.path / MODEL_FILE
    raise MissingPath(
        f"{named}: no {ENCODER_FILE}, complete checkpoint or federated round there; {WHAT_IS_READ}"
    )


def _metadata(path: Path) -> dict[str, str]:
    try:
        return read_metadata(path)
    except SafetensorError as error:
        raise ConfigError(
            f"{path} is not a readable safetensors file ({error}): a truncated file, or not"
            f" an fmcore encoder, checkpoint or round file"
        ) from error


def _tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise ConfigError(f"{path}: its tensors cannot be read ({error})") from error


def _run_config(path: Path, weights: Path) -> DictConfig:
    if not path.is_file():
        raise MissingPath(
            f"{weights} holds a method's state, read with its run's config, and {path} is"
            " missing: keep the file inside its run directory"
        )
    return OmegaConf.load(path)


def _from_checkpoint(checkpoint: Checkpoint, registry: Registry) -> EncoderSource:
    config = _run_config(checkpoint.path.parents[1] / RUN_CONFIG_FILE, checkpoint.path)
    parts = build_parts(config, registry)
    path = checkpoint.path / MODEL_FILE
    state = _exported_state(parts.method, _tensors(path), path)
    metadata = run_encoder_metadata(config, parts.modality.name, checkpoint.step)
    return EncoderSource(path, state, metadata)


def _from_round(
    path: Path, metadata: dict[str, str], registry: Registry, domain: str | None
) -> EncoderSource:
    grouped: dict[str, dict[str, Tensor]] = {}
    for name, value in _tensors(path).items():
        group, _, entry = name.partition("/")
        grouped.setdefault(group, {})[entry] = value
    config = _round_config(path, set(grouped), domain)
    parts = build_parts(config, registry)
    wanted = [SHARED_GROUP, domain_group(str(config.domain.name), parts.modality.name)]
    absent = [group for group in wanted if group not in grouped]
    if absent:
        raise ConfigError(
            f"{path} holds no {' or '.join(absent)} weights for the domain"
            f" {config.domain.name}; its groups: {', '.join(sorted(grouped))}"
        )
    state = {entry: value for group in wanted for entry, value in grouped[group].items()}
    step = int(metadata.get(ROUND_KEY, 0)) * int(config.federated.local_steps)
    encoder_metadata = run_encoder_metadata(config, parts.modality.name, step)
    return EncoderSource(path, _exported_state(parts.method, state, path), encoder_metadata)


def _round_config(path: Path, groups: set[str], domain: str | None) -> DictConfig:
    """The federation's config; for another ``domain`` of the round (``groups``), a simulated
    site's of that domain: the federation's config composes only its first domain's data."""
    run_dir = path.parents[1]
    federation = _run_config(run_dir / RUN_CONFIG_FILE, path)
    if domain is None or str(federation.domain.name) == domain:
        return federation
    for site in sorted((run_dir / SITES_DIR).glob(f"*/{RUN_CONFIG_FILE}")):
        config = OmegaConf.load(site)
        if str(config.domain.name) == domain:
            return config
    if any(group.startswith(domain_group(domain, "")) for group in groups):
        raise MissingPath(
            f"{path} holds {domain}'s tokenizer, but its federation's {RUN_CONFIG_FILE} is"
            f" {federation.domain.name}'s and no {SITES_DIR}/<name>/{RUN_CONFIG_FILE} of a"
            f" {domain} site is beside it: copy one there (a site keeps it in its state"
            " directory)"
        )
    return federation  # a domain the federation never saw: its own encoder, as an encoder file's


def _exported_state(method: Method, state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """The entries of a method's ``state`` (read from ``path``) that make up the encoder it
    exports, under the encoder's own names."""
    name = type(method).__name__
    exported = method.export_encoder()
    prefix = next((p for p, module in method.named_modules() if module is exported), None)
    if prefix is None:
        raise ConfigError(
            f"{name}.export_encoder() returns a module the method does not hold, so {path}"
            " does not say which of its weights are the encoder"
        )
    names = {f"{prefix}.{key}": key for key in exported.state_dict()}
    missing = sorted(set(names) - set(state))
    if missing:
        raise ConfigError(
            f"{path} lacks {len(missing)} weight(s) of the encoder {name} exports, e.g."
            f" {missing[:3]}: written by another method or encoder than its run's config.yaml"
            " says?"
        )
    encoder_state = {key: state[full] for full, key in names.items()}
    try:
        exported.load_state_dict(encoder_state)
    except RuntimeError as error:  # shapes
        raise ConfigError(f"{path} does not fit its run's encoder: {error}") from error
    return encoder_state
