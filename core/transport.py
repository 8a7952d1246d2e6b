"""The transport rule: what a data-loader worker hands over, and how the device makes floats of it.

Workers return each sample in the integer type its file stores: uint8 for 8-bit pictures and
video, uint16 for 16-bit ones. That is a quarter (a half) of float32's bytes through the
workers' shared memory, the collate and the pinned copy. On the device, :func:`unit_float` maps
a batch to floats in [0, 1], batched, as the first step of the view pipeline and of evaluation:
unsigned integers by their type's full scale (255, 65535), or by the domain's ``value_range``
where the stored values have another scale (digits' counts 0-16, CT's Hounsfield units). A
domain whose data are floats by nature (point coordinates) says so (``Domain.float_samples``)
and hands floats over.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

UNSIGNED = (torch.uint8, torch.uint16, torch.uint32)


def full_scale(dtype: torch.dtype) -> int:
    """The value of an unsigned integer type that means 1.0 (255 for uint8)."""
    if dtype not in UNSIGNED:
        raise TypeError(
            f"{dtype} data have no full scale: a domain handing over signed integers sets"
            " value_range (the stored values that mean 0 and 1)"
        )
    return int(torch.iinfo(dtype).max)


def unit_float(data: Tensor, value_range: tuple[float, float] | None = None) -> Tensor:
    """float32 ``data`` in [0, 1]: integers mapped linearly so ``value_range`` (low, high), by
    default (0, the type's full scale), goes to (0, 1), clamped; float data as float32."""
    if data.is_floating_point():
        return data.float()
    low, high = value_range if value_range is not None else (0.0, float(full_scale(data.dtype)))
    values = data.float()
    if low != 0:
        values.sub_(low)
    return values.div_(high - low).clamp_(0.0, 1.0)  # divided: correctly rounded


def quantize(values: Tensor, dtype: torch.dtype = torch.uint16) -> Tensor:
    """Float ``values`` in [0, 1] as the nearest levels of the unsigned ``dtype``: for a decoder
    whose source is floats (a 16-bit photograph resized in float). uint16 keeps them within
    0.5 / 65535 (7.6e-6)."""
    scale = full_scale(dtype)
    return values.clamp(0, 1).mul(scale).round_().to(torch.int32).to(dtype)


def stack_samples(samples: list[Tensor]) -> Tensor:
    """One batch of samples as workers hand them over, stacked by NumPy: a single-threaded
    copy, where torch.stack's parallel one stalls for tens of milliseconds in a main process
    (num_workers=0) whose cores other processes hold (bench/pathology_loader.py). Unsigned
    samples of different widths (an 8-bit and a 16-bit photograph) are widened to the widest by
    full scale (x 257 for uint8 to uint16: the same value in [0, 1]); other mixes are a broken
    domain."""
    dtypes = {sample.dtype for sample in samples}
    if len(dtypes) > 1:
        if not dtypes <= set(UNSIGNED):
            raise TypeError(f"samples of one batch have different types {sorted(map(str, dtypes))}")
        widest = max(dtypes, key=full_scale)
        samples = [_widen(sample, widest) for sample in samples]
    if samples[0].dtype == torch.bfloat16:  # NumPy has no bfloat16
        return torch.stack(samples)
    return torch.from_numpy(np.stack([sample.numpy() for sample in samples]))


def _widen(sample: Tensor, dtype: torch.dtype) -> Tensor:
    if sample.dtype == dtype:
        return sample
    factor = full_scale(dtype) // full_scale(sample.dtype)  # 2^16-1 = 257 (2^8-1): exact
    return sample.to(torch.int64).mul_(factor).to(dtype)


def transport_problem(
    data: Tensor, float_samples: bool, value_range: tuple[float, float] | None
) -> str | None:
    """Why ``data`` breaks the transport rule, or None: a domain hands over integers (signed
    ones with a ``value_range``), floats only where they are its data's nature
    (``float_samples``)."""
    if float_samples:
        if data.is_floating_point():
            return None
        return f"load returned {data.dtype} data, but the domain hands over floats (float_samples)"
    if data.is_floating_point() or data.is_complex():
        return (
            f"load returned {data.dtype} data: workers hand over the integers the file stores"
            " (uint8 for 8-bit pictures, uint16 for 16-bit ones) and the device maps them to"
            " [0, 1]; quantize() a float source (fmcore.api), or set float_samples = True for"
            " data that are floats by nature (point coordinates)"
        )
    if value_range is None and data.dtype not in UNSIGNED:
        return f"load returned {data.dtype} data, which need the domain's value_range"
    return None
