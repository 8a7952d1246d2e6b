"""What indexing learned about each input file (a video's frame count, a point cloud's point
count), kept in one JSON file keyed by path, size and modification time, so a folder of many
files is probed once and not on every run.

Failures are kept too, so a corrupt file is not probed again either; a changed file gets a new
key and is probed afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

Facts = dict[str, Any]  # what one probe found: JSON values only


def file_key(path: Path, version: int) -> str:
    """A key that changes when the file's path, size or modification time (or ``version``,
    the shape of what a probe records) changes."""
    stat = os.stat(path)
    blob = json.dumps([version, str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def probe_files(
    paths: Sequence[Path],
    cache_file: Path,
    probe: Callable[[Path], Facts],
    unusable: type[Exception],
    version: int,
    workers: int = 4,
) -> list[Facts | str]:
    """Each path's facts, or the reason it cannot be used, from ``cache_file`` where the file is
    unchanged since it was probed; the rest are probed (in ``workers`` threads) and added.

    ``probe`` raises ``unusable`` with the reason for a file it refuses; any other exception
    from a decoder on one file is recorded with its type, so it cannot end the index.
    """
    entries = _read_cache(cache_file)
    keys = [file_key(path, version) for path in paths]
    missing = [(key, path) for key, path in zip(keys, paths, strict=True) if key not in entries]

    def run(item: tuple[str, Path]) -> tuple[str, dict[str, Any]]:
        key, path = item
        try:
            return key, {"facts": probe(path)}
        except unusable as error:
            return key, {"error": str(error)}
        except Exception as error:
            return key, {"error": f"cannot be probed: {type(error).__name__}: {error}"}

    if missing:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            entries.update(pool.map(run, missing))
        _write_cache(cache_file, entries)
    return [_entry(entries[key]) for key in keys]


def _entry(entry: dict[str, Any]) -> Facts | str:
    return str(entry["error"]) if "error" in entry else dict(entry["facts"])


def _read_cache(cache_file: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}  # missing or unreadable: probe again


def _write_cache(cache_file: Path, entries: dict[str, dict[str, Any]]) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_name(f"{cache_file.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(entries))
    os.replace(partial, cache_file)
