"""Export a 2D encoder to timm's VisionTransformer state-dict layout and load it back.

timm (timm/models/vision_transformer.py) keeps ``cls_token`` (1, 1, D), ``reg_token`` (1, R, D),
one ``pos_embed`` and ``patch_embed.proj``; the trunk's ``blocks.*`` and ``norm.*`` already carry
timm's names. ``pos_embed`` has two layouts, picked by timm's ``no_embed_class``:

- ``False`` (timm's default, e.g. vit_small_patch16_224): (1, 1 + R + N, D), a row for the class
  token, each register and each patch, added after concatenation. The trunk's ``cls_pos`` is row 0;
  registers carry no position here, so their rows are exported as zeros and folded into
  ``reg_token`` on load.
- ``True`` (DeiT-3, timm's DINOv2 and register models): (1, N, D) for the patches only; the class
  token's position is folded into ``cls_token``.

Both are exact: a prefix token's positional embedding is a constant added to a constant. The
encoder's ``mask_token`` has no timm counterpart and is neither exported nor loaded.
"""

from __future__ import annotations

import logging
import math
from os import PathLike
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from fmcore.backbones.vit import VisionTransformer
from fmcore.encoder import Encoder
from fmcore.io import atomic_save_tensors
from fmcore.modalities.grid import GridTokenizer, resample_grid_embedding

logger = logging.getLogger(__name__)

#: timm classifier parts (VisionTransformer.head and .fc_norm) that loading skips.
CLASSIFIER_KEYS = ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias")


def _tokenizer_2d(encoder: Encoder) -> GridTokenizer:
    tokenizer = encoder.tokenizer
    if not isinstance(tokenizer, GridTokenizer) or len(tokenizer.patch) != 2:
        raise ValueError(
            "timm's VisionTransformer layout needs a 2D GridTokenizer (image2d); this encoder has "
            f"{type(tokenizer).__name__}"
            + (f" with patch {tokenizer.patch}" if isinstance(tokenizer, GridTokenizer) else "")
        )
    return tokenizer


def _vit_trunk(encoder: Encoder) -> VisionTransformer:
    if not isinstance(encoder.trunk, VisionTransformer):
        raise ValueError(
            "timm's VisionTransformer layout needs the vit trunk; this encoder has "
            f"{type(encoder.trunk).__name__}"
        )
    return encoder.trunk


@torch.no_grad()
def to_timm_state_dict(encoder: Encoder, no_embed_class: bool | None = None) -> dict[str, Tensor]:
    """The encoder's weights under timm's VisionTransformer names, as detached copies.

    ``no_embed_class`` picks the ``pos_embed`` layout (see the module docstring). By default it
    is what timm's own models of that kind use: ``True`` with registers (timm's register and
    DINOv2 models are all built so), ``False`` without (vit_small_patch16_224 and kin).
    """
    if no_embed_class is None:
        no_embed_class = _vit_trunk(encoder).config.num_registers > 0
    return _timm_state(encoder, no_embed_class)


def _timm_state(encoder: Encoder, no_embed_class: bool) -> dict[str, Tensor]:
    tokenizer = _tokenizer_2d(encoder)
    trunk_state = dict(_vit_trunk(encoder).state_dict())
    cls_token, cls_pos = trunk_state.pop("cls_token"), trunk_state.pop("cls_pos")
    reg_token = trunk_state.pop("reg_token", None)
    out = {"cls_token": cls_token + cls_pos if no_embed_class else cls_token}
    if reg_token is not None:
        out["reg_token"] = reg_token
    if no_embed_class:
        out["pos_embed"] = tokenizer.pos_embed
    else:
        rows = [cls_pos]
        if reg_token is not None:
            rows.append(torch.zeros_like(reg_token))
        out["pos_embed"] = torch.cat([*rows, tokenizer.pos_embed], dim=1)  # (1, 1 + R + N, D)
    out["patch_embed.proj.weight"] = tokenizer.proj.weight
    out["patch_embed.proj.bias"] = tokenizer.proj.bias
    out.update(trunk_state)  # blocks.*, norm.*
    return {key: value.detach().clone().contiguous() for key, value in out.items()}


def _pos_layouts(
    length: int, prefixes: list[int], native: tuple[int, int], grid: tuple[int, int] | None
) -> list[tuple[int, tuple[int, int]]]:
    """Candidate (prefix rows, patch grid) readings of a pos_embed with ``length`` rows: the given
    ``grid``; else the native grid if one fits, else any square grid."""
    counts = [(prefix, length - prefix) for prefix in prefixes]
    if grid is not None:
        return [(prefix, grid) for prefix, count in counts if count == math.prod(grid)]
    return [(prefix, native) for prefix, count in counts if count == math.prod(native)] or [
        (prefix, (side, side))
        for prefix, count in counts
        if count > 0 and (side := math.isqrt(count)) ** 2 == count
    ]


@torch.no_grad()
def load_timm_state_dict(
    encoder: Encoder,
    state: dict[str, Tensor],
    no_embed_class: bool | None = None,
    source_grid: tuple[int, int] | None = None,
) -> list[str]:
    """Load a timm VisionTransformer state dict into ``encoder``; returns the ignored keys.

    ``head.*`` and ``fc_norm.*`` (the classifier) are ignored. ``no_embed_class`` is inferred from
    the ``pos_embed`` length when None. A ``pos_embed`` at another grid (square unless
    ``source_grid`` says otherwise) is resampled to the tokenizer's native grid. Missing or
    unexpected keys and shape mismatches raise one ValueError naming every offending key; the
    encoder is left untouched then.
    """
    native = _tokenizer_2d(encoder).native_grid
    _vit_trunk(encoder)
    state = dict(state)
    ignored = [key for key in CLASSIFIER_KEYS if state.pop(key, None) is not None]
    missing, unexpected, mismatched = _key_problems(encoder, state, ignored)
    layout = None
    if "pos_embed" in state:
        pos = state["pos_embed"]
        layout = _pos_layout(encoder, pos, native, no_embed_class, source_grid, mismatched)
    if missing or unexpected or mismatched:
        raise _layout_error(missing, unexpected, mismatched)
    assert layout is not None
    prefix, grid = layout
    encoder.load_state_dict(_encoder_state(encoder, state, prefix, grid, native), strict=False)
    if grid != native:
        logger.info("resampled pos_embed from grid %s to %s", grid, native)
    if ignored:
        logger.info("ignored timm classifier keys: %s", ", ".join(ignored))
    return ignored


def _key_problems(
    encoder: Encoder, state: dict[str, Tensor], ignored: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, shape mismatches) of a timm state dict, pos_embed aside."""
    expected = {k: v.shape for k, v in _timm_state(encoder, False).items() if k != "pos_embed"}
    missing = [key for key in expected if key not in state]
    missing += [] if "pos_embed" in state else ["pos_embed"]
    if "norm.weight" in missing and "fc_norm.weight" in ignored:
        missing.append("(its fc_norm normalises pooled features, not tokens: not a final norm)")
    unexpected = [key for key in state if key not in expected and key != "pos_embed"]
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)}, encoder {tuple(shape)}"
        + _mismatch_hint(key, state[key].shape, shape)
        for key, shape in expected.items()
        if key in state and state[key].shape != shape
    ]
    if mismatched and _swiglu_checkpoint(state) != (_vit_trunk(encoder).config.ffn == "swiglu"):
        wanted = "swiglu" if _swiglu_checkpoint(state) else "mlp"
        mismatched.append(f"(the checkpoint's feed-forward wants encoder.vit.ffn={wanted})")
    return missing, unexpected, mismatched


def _swiglu_checkpoint(state: dict[str, Tensor]) -> bool:
    """A packed SwiGLU's fc1 is twice as wide as its fc2's input; a GELU MLP's is as wide."""
    fc1, fc2 = state.get("blocks.0.mlp.fc1.weight"), state.get("blocks.0.mlp.fc2.weight")
    return fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]


def _mismatch_hint(key: str, saved: torch.Size, wanted: torch.Size) -> str:
    """The config keys that make the encoder match a checkpoint's patch projection."""
    if key != "patch_embed.proj.weight" or len(saved) != 4:
        return ""
    hints = []
    if saved[0] != wanted[0]:
        hints.append(f"an encoder= of width {saved[0]}")
    if saved[1] != wanted[1]:
        hints.append(f"{saved[1]} input channels")
    if saved[2:] != wanted[2:]:
        hints.append(f"encoder.tokenizer.patch_size={saved[2]}")
    return f" (the checkpoint wants {', '.join(hints)})"


def _pos_layout(
    encoder: Encoder,
    pos: Tensor,
    native: tuple[int, int],
    no_embed_class: bool | None,
    source_grid: tuple[int, int] | None,
    mismatched: list[str],
) -> tuple[int, tuple[int, int]] | None:
    """(prefix rows in pos_embed, its patch grid), or None with the reason added to
    ``mismatched`` when the table has no single reading."""
    registers = _vit_trunk(encoder).config.num_registers
    if pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[2] != encoder.embed_dim:
        want = f"(1, L, {encoder.embed_dim})"
        mismatched.append(f"pos_embed: checkpoint {tuple(pos.shape)}, encoder {want}")
        return None
    options = [False, True] if no_embed_class is None else [no_embed_class]
    prefixes = [0 if option else 1 + registers for option in options]
    found = _pos_layouts(pos.shape[1], prefixes, native, source_grid)
    if len(found) == 1:
        return found[0]
    reading = "more than one" if found else "no"
    mismatched.append(
        f"pos_embed: checkpoint {tuple(pos.shape)} has {reading} reading as"
        f" [1 + {registers} prefix rows +] an (h, w) patch grid (square unless"
        " source_grid= is given); pass no_embed_class= and/or source_grid="
    )
    return None


def _layout_error(missing: list[str], unexpected: list[str], mismatched: list[str]) -> ValueError:
    return ValueError(
        "checkpoint does not match timm's layout for this encoder:"
        + key_problems_text(missing, unexpected, mismatched)
    )


def key_problems_text(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    """The indented lines naming a state dict's missing and unexpected keys and its shape
    mismatches (one a line), for an error about weights that do not fit an encoder."""
    return "".join(
        f"\n  {title}: {separator.join(keys)}"
        for title, keys, separator in (
            ("missing keys", missing, ", "),
            ("unexpected keys", unexpected, ", "),
            ("shape mismatches", mismatched, "\n    "),
        )
        if keys
    )


def _encoder_state(
    encoder: Encoder,
    state: dict[str, Tensor],
    prefix: int,
    grid: tuple[int, int],
    native: tuple[int, int],
) -> dict[str, Tensor]:
    """The timm state dict renamed to the encoder's keys, pos_embed resampled to its grid."""
    state = dict(state)
    pos = state.pop("pos_embed")
    mapped = {
        "tokenizer.proj.weight": state.pop("patch_embed.proj.weight"),
        "tokenizer.proj.bias": state.pop("patch_embed.proj.bias"),
        "tokenizer.pos_embed": resample_grid_embedding(pos[:, prefix:], grid, native),
        "trunk.cls_pos": pos[:, :1] if prefix else torch.zeros_like(state["cls_token"]),
    }
    if _vit_trunk(encoder).config.num_registers:
        reg_token = state.pop("reg_token")
        mapped["trunk.reg_token"] = reg_token + pos[:, 1:prefix] if prefix else reg_token
    mapped.update({f"trunk.{key}": value for key, value in state.items()})  # cls_token, blocks...
    uncovered = sorted(set(encoder.state_dict()) - set(mapped) - {"mask_token"})
    if uncovered:  # only if the tokenizer gains parameters that timm's layout lacks
        raise ValueError(f"encoder keys not covered by timm's layout: {uncovered}")
    return mapped


def export_timm(
    encoder: Encoder, path: str | PathLike[str], no_embed_class: bool | None = None
) -> None:
    """Write the encoder as a timm-layout .safetensors file (``no_embed_class`` as in
    :func:`to_timm_state_dict`)."""
    state = to_timm_state_dict(encoder, no_embed_class)
    atomic_save_tensors(state, Path(path), metadata={"format": "pt"})


def import_timm(
    encoder: Encoder,
    path: str | PathLike[str],
    no_embed_class: bool | None = None,
    source_grid: tuple[int, int] | None = None,
) -> list[str]:
    """Load a timm-layout .safetensors file into the encoder; returns the ignored keys."""
    return load_timm_state_dict(encoder, load_file(str(path)), no_embed_class, source_grid)
