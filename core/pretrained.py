"""Start an encoder from weights on disk (``init=PATH``): fmcore, timm and DINOv2 files.

Three layouts are read, told apart by their keys:

- an fmcore encoder (``encoder.safetensors``, or the run directory holding it): loaded as saved;
- timm's VisionTransformer (``patch_embed.proj.weight``, ``cls_token``, ``blocks.*``), as a
  ``.safetensors`` file or a PyTorch pickle: renamed by :mod:`fmcore.timm_layout`;
- the official DINOv2 releases and training checkpoints (``mask_token`` of shape (1, D),
  ``register_tokens``, SwiGLU ``w12``/``w3``, chunked ``blocks.<chunk>.<block>``): converted to
  timm's layout first, as timm's own ``_convert_dinov2`` does, then loaded the same way, and the
  mask token kept for masked-token methods.

A checkpoint that wraps the backbone (``{"teacher": ...}``, ``teacher.backbone.``,
``module.``, ``student.backbone.``) is unwrapped: nested dictionaries are flattened and the one
prefix in front of ``patch_embed.proj.weight`` is stripped, the teacher's when there are several
(DINOv2 evaluates its teacher). A positional table at another patch grid is resampled with
:func:`fmcore.modalities.grid.resample_grid_embedding`, as timm resamples it.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from fmcore.encoder import Encoder
from fmcore.errors import ConfigError
from fmcore.io import read_metadata
from fmcore.modalities.grid import GridTokenizer, resample_grid_embedding
from fmcore.run_files import ENCODER_CONFIG_KEY, check_encoder_format
from fmcore.timm_layout import key_problems_text, load_timm_state_dict

logger = logging.getLogger(__name__)

PATCH_KEY = "patch_embed.proj.weight"
POSITIONS_KEY = "tokenizer.pos_embed"
CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
LAYOUTS = ("fmcore", "timm", "dinov2")


@dataclass
class LoadedWeights:
    """What ``init=`` loaded: the file, its layout, the prefix stripped from its keys, the keys
    left aside (a classifier head) and the patch grid its positional table was resampled from."""

    path: Path
    layout: str
    prefix: str = ""
    ignored: list[str] = field(default_factory=list)
    resampled_from: tuple[int, ...] | None = None

    def describe(self) -> str:
        parts = [f"{self.layout} weights from {self.path}"]
        if self.prefix:
            parts.append(f"under {self.prefix!r}")
        if self.resampled_from:
            parts.append(f"positions resampled from grid {self.resampled_from}")
        if self.ignored:
            parts.append(f"ignored {', '.join(self.ignored)}")
        return "; ".join(parts)


def load_pretrained(encoder: Encoder, path: Path) -> LoadedWeights:
    """Load the weights at ``path`` (a file; a run directory is resolved by the caller) into
    ``encoder``. Anything that does not fit raises a ConfigError naming ``init=``, the file and
    every offending key; the encoder is then left as it was."""
    if not path.is_file():
        raise ConfigError(f"init={path}: no such file")
    metadata = _metadata(path) if path.suffix == ".safetensors" else {}
    if ENCODER_CONFIG_KEY in metadata:
        check_encoder_format(metadata, path)
        loaded = LoadedWeights(path, "fmcore")
        loaded.resampled_from = _load_fmcore_state(encoder, load_file(str(path)), path)
    else:
        loaded = _load_foreign(encoder, _read_tensors(path), path)
    logger.info("init: %s", loaded.describe())
    return loaded


def _metadata(path: Path) -> dict[str, str]:
    try:
        return read_metadata(path)
    except (SafetensorError, OSError) as error:
        raise ConfigError(f"init={path}: not a readable safetensors file ({error})") from error


def _read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor in a safetensors file or a PyTorch pickle, nested keys joined with dots."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refuses objects that would run code
        raise ConfigError(
            f"init={path}: not a PyTorch weights file, or one holding objects besides tensors,"
            " which fmcore does not unpickle (they could run code): save the state dict alone"
        ) from error
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as error:
        raise ConfigError(
            f"init={path}: not a readable safetensors or PyTorch weights file ({error})"
        ) from error
    return _flatten(content)


def _flatten(content: object, prefix: str = "") -> dict[str, Tensor]:
    if isinstance(content, Tensor):
        return {prefix.rstrip("."): content}
    flat: dict[str, Tensor] = {}
    if isinstance(content, Mapping):
        for key, value in content.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def _load_foreign(encoder: Encoder, tensors: dict[str, Tensor], path: Path) -> LoadedWeights:
    prefix = _backbone_prefix(tensors, path)
    state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
    state = {CHUNKED_BLOCK.sub(r"blocks.\1.", key): value for key, value in state.items()}
    mask_token = None
    no_embed_class = None
    layout = "timm"
    if _is_dinov2(state):
        layout = "dinov2"
        state, mask_token, no_embed_class = dinov2_to_timm(state)
    loaded = LoadedWeights(path, layout, prefix)
    try:
        loaded.ignored = load_timm_state_dict(encoder, state, no_embed_class)
    except ValueError as error:
        raise ConfigError(f"init={path} ({layout} layout): {error}") from error
    if mask_token is not None:
        with torch.no_grad():
            encoder.mask_token.copy_(mask_token.reshape(encoder.mask_token.shape))
    return loaded


def _backbone_prefix(tensors: dict[str, Tensor], path: Path) -> str:
    """The prefix in front of the ViT's keys: the only one, else the teacher's."""
    prefixes = [key[: -len(PATCH_KEY)] for key in tensors if key.endswith(PATCH_KEY)]
    if not prefixes:
        fmcore_state = any(key.endswith("tokenizer.proj.weight") for key in tensors)
        hint = (
            " (fmcore training state: give the run directory or its encoder.safetensors)"
            if fmcore_state
            else ""
        )
        raise ConfigError(
            f"init={path}: no ViT weights found (no key ends in {PATCH_KEY}){hint}; fmcore reads"
            f" {', '.join(LAYOUTS)} layouts"
        )
    if len(prefixes) == 1:
        return prefixes[0]
    teachers = [prefix for prefix in prefixes if "teacher" in prefix]
    if len(teachers) == 1:
        return teachers[0]
    raise ConfigError(
        f"init={path}: several ViTs in one file ({', '.join(repr(p) for p in prefixes)}) and no"
        " single teacher among them: save the one to start from on its own"
    )


def _is_dinov2(state: dict[str, Tensor]) -> bool:
    mask_token = state.get("mask_token")
    return (
        "register_tokens" in state
        or (mask_token is not None and mask_token.dim() == 2)
        or any(".mlp.w12." in key for key in state)
    )


def dinov2_to_timm(
    state: dict[str, Tensor],
) -> tuple[dict[str, Tensor], Tensor | None, bool]:
    """(timm state dict, DINOv2's mask token or None, timm's ``no_embed_class``) for a DINOv2
    backbone state dict.

    DINOv2's ``pos_embed`` is (1, 1 + N, D) with or without registers, which are inserted after
    the positions are added. Without registers that is timm's ``no_embed_class=False`` table; with
    them, the class row is folded into ``cls_token`` and the patch rows kept, timm's
    ``no_embed_class=True`` table.
    """
    state = dict(state)
    mask_token = state.pop("mask_token", None)
    registers = state.pop("register_tokens", None)
    if registers is not None:
        state["reg_token"] = registers
        pos = state.pop("pos_embed")
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]
    renamed = {
        re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", key)): value
        for key, value in state.items()
    }
    return renamed, mask_token, registers is not None


def _load_fmcore_state(
    encoder: Encoder, state: dict[str, Tensor], path: Path
) -> tuple[int, ...] | None:
    """Load an fmcore encoder's tensors, resampling a 2D positional table saved at another
    square grid; returns that grid, or None when none was resampled."""
    expected = encoder.state_dict()
    resampled_from = None
    saved_positions = state.get(POSITIONS_KEY)
    if (
        saved_positions is not None
        and POSITIONS_KEY in expected
        and saved_positions.shape != expected[POSITIONS_KEY].shape
    ):
        resampled_from = _square_grid(encoder, saved_positions)
        if resampled_from is not None:
            native = encoder.tokenizer.native_grid  # type: ignore[union-attr]
            state = {
                **state,
                POSITIONS_KEY: resample_grid_embedding(saved_positions, resampled_from, native),
            }
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key}: file {tuple(state[key].shape)}, encoder {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or mismatched:
        raise ConfigError(
            f"init={path} (an fmcore encoder) does not fit the configured encoder:"
            + key_problems_text(missing, unexpected, mismatched)
        )
    encoder.load_state_dict(state)
    return resampled_from


def _square_grid(encoder: Encoder, positions: Tensor) -> tuple[int, int] | None:
    """The square 2D grid a saved (1, N, D) table covers, when the encoder's tokenizer is 2D."""
    tokenizer = encoder.tokenizer
    if not isinstance(tokenizer, GridTokenizer) or len(tokenizer.patch) != 2:
        return None
    count = positions.shape[1]
    side = math.isqrt(count)
    if side * side != count or positions.shape[2] != encoder.embed_dim:
        return None
    return (side, side)
