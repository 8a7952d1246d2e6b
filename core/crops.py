"""A fixed-size sample from an array of any size: crop where it is larger, pad where smaller.

Positions are fractions of the room left in each axis, so a reference chooses its crop without
knowing the volume's shape, and the same reference always gives the same voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def crop_or_pad(
    volume: np.ndarray, size: Sequence[int], position: Sequence[float], fill: float = 0.0
) -> np.ndarray:
    """``size`` voxels of ``volume`` starting at ``position`` x (shape - size) per axis; axes
    shorter than ``size`` are centred in ``fill`` (air after windowing). Leading axes beyond
    ``len(size)`` (channels) are kept whole."""
    leading = volume.shape[: volume.ndim - len(size)]
    out = np.full((*leading, *size), fill, dtype=np.float32)
    source: list[slice] = [slice(None)] * len(leading)
    target: list[slice] = [slice(None)] * len(leading)
    for length, want, where in zip(volume.shape[len(leading) :], size, position, strict=True):
        if length >= want:
            start = round(float(where) * (length - want))
            source.append(slice(start, start + want))
            target.append(slice(0, want))
        else:
            start = (want - length) // 2
            source.append(slice(0, length))
            target.append(slice(start, start + length))
    out[tuple(target)] = volume[tuple(source)]
    return out
