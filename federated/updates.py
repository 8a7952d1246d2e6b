"""Checking a site's update before it is aggregated: the expected entries, shapes, finite values."""

from __future__ import annotations

import numpy as np


def update_problem(received: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> str | None:
    """Why an update must be rejected, or None. ``expected`` is the group's global state."""
    missing = sorted(set(expected) - set(received))
    unknown = sorted(set(received) - set(expected))
    if missing or unknown:
        return f"entries differ from the global model: missing {missing[:3]}, unknown {unknown[:3]}"
    for key, value in received.items():
        if value.shape != expected[key].shape:
            return f"'{key}' has shape {list(value.shape)}, expected {list(expected[key].shape)}"
        if value.dtype.kind != expected[key].dtype.kind:
            return f"'{key}' holds {value.dtype} values, expected {expected[key].dtype}"
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            return f"'{key}' holds NaN or Inf values"
    return None
