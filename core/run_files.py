"""What a run directory holds, by name, and the format of the encoder file users keep.

``fmcore train`` writes a run directory; ``fmcore eval``, ``fmcore report``, the federated server
and plugins read it. They all take the names from here::

    runs/<domain>-<method>-<date>-<time>/
        config.yaml             the resolved config the run used
        metrics.jsonl           one JSON line per logged step
        summary.json            steps, skipped samples and bad inputs, time
        encoder.safetensors     the exported encoder (ENCODER_FORMAT)
        checkpoints/step_<N>/   complete checkpoints (fmcore.engine.checkpoint)
        eval.json               an evaluation's result (fmcore eval)
        report/                 fmcore report's figures

A federated run directory (``fmcore federate``, or a deployed server's ``run.dir``) holds the same
``config.yaml`` and the global weights after every round::

    runs/federated-<domain>-<method>-<date>-<time>/
        rounds/round_<NNNN>.safetensors   ROUND_FORMAT: entries ``<group>/<state-dict key>``
        rounds.jsonl                      what each round cost and who took part
        sites/<name>/                     each simulated site's own training run directory

``fmcore.encoder_source`` reads an encoder out of any of them.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

from torch import Tensor

from fmcore.errors import ConfigError
from fmcore.io import atomic_save_tensors

RUNS_DIR = "runs"  # where a run without run.dir goes, below the working directory
RUN_CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ENCODER_FILE = "encoder.safetensors"
CHECKPOINTS_DIR = "checkpoints"
EVAL_FILE = "eval.json"
REPORT_DIR = "report"
ROUNDS_DIR = "rounds"
ROUND_FILE = re.compile(r"^round_(\d{4,})\.safetensors$")
ROUND_FORMAT = "fmcore.federated/1"
ROUND_KEY = "round"  # a round file's metadata: its round number (beside FORMAT_KEY)
# The server optimizer's state beside a round (rounds/server_optimizer_<NNNN>.safetensors):
# entries ``<group>/<attribute>/<key>``, not weights.
SERVER_OPTIMIZER_FORMAT = "fmcore.server-optimizer/1"
SITES_DIR = "sites"
# A round file's groups: the trunk shared by every site, and one per domain and modality.
SHARED_GROUP = "shared"

ENCODER_FORMAT = "fmcore.encoder/2"  # 2: a trunk's own keys under encoder.<trunk>
# Keys of the encoder file's metadata (all strings; the encoder and data configs as YAML).
FORMAT_KEY = "format"
STEP_KEY = "step"
MODALITY_KEY = "modality"
DOMAIN_KEY = "domain"
ENCODER_CONFIG_KEY = "encoder"
DATA_CONFIG_KEY = "data"
FEATURES_KEY = "features"  # the features evaluation scores by default (cls, mean, cls+mean)


def round_file_name(server_round: int) -> str:
    return f"round_{server_round:04d}.safetensors"


def round_files(directory: Path) -> dict[int, Path]:
    """The complete round files of a federated run's ``rounds/`` folder, by round number."""
    if not directory.is_dir():
        return {}
    return {
        int(match.group(1)): directory / name
        for name in os.listdir(directory)
        if (match := ROUND_FILE.match(name))
    }


def domain_group(domain: str, modality: str) -> str:
    """The round-file group of the entries sites of one domain and modality average together."""
    return f"domain:{domain}:{modality}"


def timestamped_run_dir(*name_parts: str, stamp: str | None = None) -> Path:
    """``runs/<part>-<part>-<YYYYmmdd-HHMMSS>``: a run directory named after what it ran."""
    stamp = stamp or datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(RUNS_DIR) / "-".join([*name_parts, stamp])


def encoder_metadata(
    *, step: int, modality: str, domain: str, encoder_yaml: str, data_yaml: str, features: str
) -> dict[str, str]:
    """The metadata that lets ``fmcore eval checkpoint=<file>`` rebuild the trained encoder."""
    return {
        FORMAT_KEY: ENCODER_FORMAT,
        STEP_KEY: str(step),
        MODALITY_KEY: modality,
        DOMAIN_KEY: domain,
        ENCODER_CONFIG_KEY: encoder_yaml,
        DATA_CONFIG_KEY: data_yaml,
        FEATURES_KEY: features,
    }


def write_encoder(state: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write the encoder users keep as one safetensors file (``encoder_metadata``), atomically."""
    atomic_save_tensors(state, path, metadata)


def check_encoder_format(metadata: dict[str, str], path: Path) -> None:
    """Refuse a file that is not an fmcore encoder of the format this fmcore reads."""
    if ENCODER_CONFIG_KEY not in metadata:
        raise ConfigError(f"{path}: the metadata has no encoder config: not an fmcore encoder")
    if metadata.get(FORMAT_KEY) != ENCODER_FORMAT:
        raise ConfigError(
            f"{path} is an encoder file of format {metadata.get(FORMAT_KEY)} and this fmcore"
            f" reads {ENCODER_FORMAT} (a trunk's own keys moved under encoder.<trunk>): train it"
            " again, or load its weights by hand into an encoder built from today's config"
        )
