"""Model weights on the wire: torch state dicts to Flower ArrayRecords and back, optionally bf16.

numpy has no bfloat16, so a bf16 update travels as the raw 16-bit patterns (uint16) and the
receiver widens it back to float32 before anything is aggregated.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fmcore.errors import ConfigError
from fmcore.federated.store import contiguous

WIRE_DTYPES = ("fp32", "bf16")
# The records of fmcore's messages, by name: the site, its metrics, the round's config.
SITE_RECORD = "site"
METRICS_RECORD = "metrics"
CONFIG_RECORD = "config"
#: The config record's key naming the wire dtype of the global weights a server message carries.
GLOBAL_DTYPE_KEY = "global-dtype"


def check_wire_dtype(dtype: str) -> str:
    if dtype not in WIRE_DTYPES:
        raise ConfigError(
            f"a wire dtype (federated.update_dtype, federated.global_dtype) must be"
            f" {' or '.join(WIRE_DTYPES)}, not '{dtype}'"
        )
    return dtype


def to_record(state: dict[str, torch.Tensor], dtype: str = "fp32") -> ArrayRecord:
    """Float entries travel as float32, or as bf16 bit patterns with ``dtype='bf16'``; in sorted
    order, as :func:`as_record` writes them, so a receiver can aggregate the record as it is."""
    check_wire_dtype(dtype)
    arrays = {}
    for key in sorted(state):
        tensor = state[key].detach().cpu()
        if tensor.is_floating_point():
            if dtype == "bf16":
                tensor = tensor.to(torch.bfloat16).view(torch.int16)
                arrays[key] = Array(tensor.numpy().view(np.uint16))
                continue
            tensor = tensor.float()
        arrays[key] = Array(tensor.contiguous().numpy())
    return ArrayRecord(arrays)


def to_numpy(record: ArrayRecord, dtype: str = "fp32") -> dict[str, np.ndarray]:
    """An ArrayRecord as float32 (from bf16 patterns when ``dtype='bf16'``) numpy arrays."""
    check_wire_dtype(dtype)
    out = {}
    for key, array in record.items():
        value = array.numpy()
        if dtype == "bf16" and value.dtype == np.uint16:
            bits = torch.from_numpy(value.view(np.int16).copy())
            value = bits.view(torch.bfloat16).float().numpy()
        out[key] = value
    return out


def to_state(record: ArrayRecord, dtype: str = "fp32") -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value.copy()) for key, value in to_numpy(record, dtype).items()}


def wire_rounded(state: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """``state`` with its floating arrays rounded to what ``dtype`` on the wire delivers (the
    same dtype kept; other arrays as they are)."""
    if check_wire_dtype(dtype) == "fp32":
        return state
    rounded = {}
    for key, value in state.items():
        if np.issubdtype(value.dtype, np.floating):
            as_bf16 = torch.from_numpy(np.ascontiguousarray(value, np.float32)).bfloat16()
            value = as_bf16.float().numpy().astype(value.dtype, copy=False)
        rounded[key] = value
    return rounded


def narrowed(content: RecordDict, dtype: str) -> RecordDict:
    """``content`` with its weights in ``dtype`` on the wire (bf16: float32 arrays as bf16 bit
    patterns), and the dtype named in its config record for the receiver."""
    if check_wire_dtype(dtype) == "fp32":
        return content
    out = RecordDict()
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            record = to_record(to_state(record), dtype)
        out[name] = record
    out[CONFIG_RECORD] = ConfigRecord({**content[CONFIG_RECORD], GLOBAL_DTYPE_KEY: dtype})
    return out


def record_bytes(record: ArrayRecord) -> int:
    """Payload bytes of the arrays (what dominates a message's size)."""
    return sum(len(array.data) for array in record.values())


def as_record(entries: dict[str, np.ndarray]) -> ArrayRecord:
    """Entries in sorted order: Flower's DP wrappers pair global and update arrays by position."""
    return ArrayRecord({key: Array(contiguous(entries[key])) for key in sorted(entries)})
