"""Decoded, resampled volumes kept as .npy files so decoding and resampling happen once.

The key covers the input files (path, size, modification time) and every preprocessing
setting; a file is written beside its final name and renamed, so concurrent workers or a crash
never leave a partial array that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

VERSION = 2  # bump when preprocessing changes in a way its settings do not show


def cache_key(paths: Sequence[str], settings: dict[str, Any]) -> str:
    files = []
    for path in paths:
        stat = os.stat(path)
        files.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"v": VERSION, "files": files, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached(directory: Path, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    """The array stored under ``key``, made and stored first if it is missing."""
    target = directory / f"{key}.npy"
    if target.exists():
        try:
            return np.load(target, mmap_mode="r")
        except (OSError, ValueError):
            target.unlink(missing_ok=True)  # unreadable: make it again
    array = make()
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f"{key}.partial-{os.getpid()}.npy"
    np.save(partial, array)
    os.replace(partial, target)
    return array
