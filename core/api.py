"""Everything a plugin may use, in one module: ``from fmcore.api import Domain, Sample, ...``.

The names here are fmcore's promise to plugin authors: they keep their meaning across minor
releases, and a change to one is announced. Every other module is internal: the engine, the
evaluation protocols, the federated runtime and the plugin manager can change without notice,
and a plugin that imports them (or reaches into another plugin) is refused by fmcore's own
import-graph test for the built-in plugins. docs/extending.md explains each contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fmcore.backbones.attention import AttentionMask
from fmcore.backbones.trunk import (
    DropPath,
    Trunk,
    TrunkOutput,
    TrunkSettings,
    trunk_options,
    trunk_settings,
)
from fmcore.backbones.vit import Block, ViTConfig, ViTOptions
from fmcore.collapse import FEATURE_STD, feature_spread
from fmcore.collapse import PREFIX as COLLAPSE_PREFIX
from fmcore.config import as_dict
from fmcore.distributed import all_reduce_, process_rank, world_size
from fmcore.domain import Domain, Sample
from fmcore.encoder import FEATURE_KINDS, Encoder, EncoderOutput, feature_kind, pool
from fmcore.errors import BadSample, ConfigError, FmcoreError, NoUsableSamples
from fmcore.hookspecs import hookimpl
from fmcore.io import atomic_save_tensors, atomic_write_bytes, atomic_write_text, write_png
from fmcore.labels import LabelTable, load_labels
from fmcore.method import Batch, Method, Scope, StepContext, StepOutput, takes_weight_decay
from fmcore.modalities.base import (
    Modality,
    Tokenizer,
    TokenizerSettings,
    Tokens,
    ViewOp,
    ViewSpec,
    ViewStep,
)
from fmcore.modalities.masking import block_mask, masked_count, random_token_mask, split_indices
from fmcore.run_files import ENCODER_FILE
from fmcore.transport import quantize

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def report_figures(run_dir: Path) -> dict[str, Figure]:
    """``fmcore report``'s figures of a run directory, ``{file name: matplotlib figure}``, for
    loggers to keep at the end of training. matplotlib loads on the first call, not with the API."""
    from fmcore.report import run_figures

    return run_figures(run_dir)


__all__ = [  # grouped by contract in the imports above
    "COLLAPSE_PREFIX",
    "ENCODER_FILE",
    "FEATURE_KINDS",
    "FEATURE_STD",
    "AttentionMask",
    "BadSample",
    "Batch",
    "Block",
    "ConfigError",
    "Domain",
    "DropPath",
    "Encoder",
    "EncoderOutput",
    "FmcoreError",
    "LabelTable",
    "Method",
    "Modality",
    "NoUsableSamples",
    "Sample",
    "Scope",
    "StepContext",
    "StepOutput",
    "Tokenizer",
    "TokenizerSettings",
    "Tokens",
    "Trunk",
    "TrunkOutput",
    "TrunkSettings",
    "ViTConfig",
    "ViTOptions",
    "ViewOp",
    "ViewSpec",
    "ViewStep",
    "all_reduce_",
    "as_dict",
    "atomic_save_tensors",
    "atomic_write_bytes",
    "atomic_write_text",
    "block_mask",
    "feature_kind",
    "feature_spread",
    "hookimpl",
    "load_labels",
    "masked_count",
    "pool",
    "process_rank",
    "quantize",
    "random_token_mask",
    "report_figures",
    "split_indices",
    "takes_weight_decay",
    "trunk_options",
    "trunk_settings",
    "world_size",
    "write_png",
]
