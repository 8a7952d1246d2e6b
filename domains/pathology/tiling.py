"""Tiles at a physical resolution: the grid, its tissue filter, and the per-slide index cache.

A tile is ``tile_size`` pixels at ``mpp`` microns per pixel whatever the scanner's resolution:
on a 0.25-mpp (40x) slide a 224-px tile at 0.5 mpp covers 448 level-0 pixels. It is read from
the coarsest pyramid level that still has that detail and resized, so a tile never costs more
pixels than needed and never comes from an upsampled level.

Finding tissue means reading a thumbnail of every slide, seconds per slide; so each slide's
tile coordinates are cached in a small ``.npz`` keyed by the slide file (path, size, mtime) and
every parameter that changes the tiles. A second run over thousands of slides starts in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fmcore.domains.pathology.slides import (
    SlideError,
    SlideInfo,
    best_level,
    describe,
    open_slide,
    read_downsampled,
)
from fmcore.domains.pathology.tissue import (
    TissueOptions,
    save_overlay,
    tissue_mask,
    tissue_overlay,
)

#: Bump when the meaning of a cached index changes, so old caches are recomputed.
CACHE_VERSION = 1


@dataclass(frozen=True)
class TilingParams:
    """Everything that decides which tiles a slide yields (and so keys the cache)."""

    tile_size: int
    mpp: float  # microns per pixel of a tile
    min_tissue: float  # fraction of a tile that must be tissue
    slide_mpp: float | None  # overrides the slides' metadata
    tissue: TissueOptions


@dataclass(frozen=True)
class TileGeometry:
    """Where one slide's tiles are read: the level, the region size there, and the grid."""

    level: int
    read_size: tuple[int, int]  # pixels read at ``level`` (resized to tile_size afterwards)
    extent: tuple[float, float]  # a tile's size in level-0 pixels (x, y)
    columns: int
    rows: int

    def origins(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 top-left corners (xs, ys) of every whole tile, row by row."""
        xs = np.round(np.arange(self.columns) * self.extent[0]).astype(np.int64)
        ys = np.round(np.arange(self.rows) * self.extent[1]).astype(np.int64)
        grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
        return grid_x.ravel(), grid_y.ravel()


def tile_geometry(info: SlideInfo, tile_size: int, mpp: float) -> TileGeometry:
    """Non-overlapping whole tiles of ``tile_size`` px at ``mpp`` over the slide's level 0."""
    extent_x = tile_size * mpp / info.mpp[0]
    extent_y = tile_size * mpp / info.mpp[1]
    # Chosen by the finer axis, so neither axis is upsampled when pixels are not square.
    level = best_level(info.level_downsamples, min(extent_x, extent_y) / tile_size)
    downsample = info.level_downsamples[level]
    read_size = (max(1, round(extent_x / downsample)), max(1, round(extent_y / downsample)))
    width, height = info.dimensions
    # A tile fits when its read region ends inside the level-0 image.
    columns = int((width - read_size[0] * downsample) // extent_x) + 1 if width else 0
    rows = int((height - read_size[1] * downsample) // extent_y) + 1 if height else 0
    return TileGeometry(level, read_size, (extent_x, extent_y), max(0, columns), max(0, rows))


def box_coverage(
    mask: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray
) -> np.ndarray:
    """Fraction of each box (fractional mask-pixel coordinates) covered by ``mask``.

    Exact for a mask taken as constant over each pixel: the integral of such a function from
    the origin is bilinear inside every pixel, so it is the bilinear interpolation of the
    summed-area table at the box corners.
    """
    height, width = mask.shape
    table = np.zeros((height + 1, width + 1), np.float64)
    table[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)

    def integral(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        u = np.clip(u, 0, width)
        v = np.clip(v, 0, height)
        i = np.minimum(np.floor(v).astype(np.int64), max(height - 1, 0))
        j = np.minimum(np.floor(u).astype(np.int64), max(width - 1, 0))
        fv, fu = v - i, u - j
        return (
            table[i, j] * (1 - fu) * (1 - fv)
            + table[i, j + 1] * fu * (1 - fv)
            + table[i + 1, j] * (1 - fu) * fv
            + table[i + 1, j + 1] * fu * fv
        )

    area = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    return area / np.maximum((x1 - x0) * (y1 - y0), 1e-12)


@dataclass(frozen=True)
class TileIndex:
    """One slide's usable tiles: where to read them and how much tissue each holds."""

    slide_mpp: tuple[float, float]
    level: int
    read_size: tuple[int, int]
    xs: np.ndarray  # level-0 x of each tile's top-left corner (int64)
    ys: np.ndarray
    tissue: np.ndarray  # tissue fraction of each tile (float32)
    grid_tiles: int  # tiles in the whole grid, before the tissue filter
    best_tissue: float  # the highest tissue fraction of any grid tile (says why none is kept)

    def __len__(self) -> int:
        return len(self.xs)

    def save(self, path: Path, key: str) -> None:
        """Write atomically: a crash or a concurrent indexer never leaves a torn cache file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        with open(partial, "wb") as handle:
            np.savez(
                handle,
                key=np.array(key),
                slide_mpp=np.array(self.slide_mpp, np.float64),
                level=np.array(self.level),
                read_size=np.array(self.read_size, np.int64),
                xs=self.xs,
                ys=self.ys,
                tissue=self.tissue,
                grid_tiles=np.array(self.grid_tiles),
                best_tissue=np.array(self.best_tissue),
            )
        partial.replace(path)

    @classmethod
    def load(cls, path: Path, key: str) -> TileIndex | None:
        """The cached index, or None if absent, unreadable or made for another key."""
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["key"]) != key:
                    return None
                return cls(
                    slide_mpp=tuple(float(v) for v in stored["slide_mpp"]),
                    level=int(stored["level"]),
                    read_size=tuple(int(v) for v in stored["read_size"]),
                    xs=stored["xs"].astype(np.int64),
                    ys=stored["ys"].astype(np.int64),
                    tissue=stored["tissue"].astype(np.float32),
                    grid_tiles=int(stored["grid_tiles"]),
                    best_tissue=float(stored["best_tissue"]),
                )
        except (OSError, KeyError, ValueError, EOFError):
            return None


def compute_tile_index(path: str, params: TilingParams, overlay: Path | None = None) -> TileIndex:
    """Open the slide, find tissue on a thumbnail, keep grid tiles with enough of it.

    Raises :class:`SlideError` for a slide that cannot be used (unreadable, no mpp). A slide
    without tissue yields an empty index (cached too: it will not have tissue next time).
    """
    import openslide

    slide = open_slide(path)
    try:
        info = describe(slide, params.slide_mpp)
        geometry = tile_geometry(info, params.tile_size, params.mpp)
        # Mask pixels per level-0 pixel; never finer than level 0 itself.
        downsample = max(1.0, params.tissue.mpp / min(info.mpp))
        try:
            thumbnail = read_downsampled(slide, info, downsample)
        except openslide.OpenSlideError as error:
            raise SlideError(
                f"cannot read the slide's thumbnail for tissue detection: {error}"
            ) from error
    finally:
        slide.close()
    mask = tissue_mask(thumbnail, params.tissue)

    xs, ys = geometry.origins()
    scale_x = mask.shape[1] / info.dimensions[0]  # mask pixels per level-0 pixel
    scale_y = mask.shape[0] / info.dimensions[1]
    x0, y0 = xs * scale_x, ys * scale_y
    x1, y1 = (xs + geometry.extent[0]) * scale_x, (ys + geometry.extent[1]) * scale_y
    coverage = box_coverage(mask, x0, y0, x1, y1) if len(xs) else np.zeros(0)
    keep = coverage >= params.min_tissue
    if overlay is not None:
        boxes = zip(x0[keep], y0[keep], x1[keep], y1[keep], strict=True)
        save_overlay(overlay, tissue_overlay(thumbnail, mask, boxes))
    return TileIndex(
        slide_mpp=info.mpp,
        level=geometry.level,
        read_size=geometry.read_size,
        xs=xs[keep],
        ys=ys[keep],
        tissue=coverage[keep].astype(np.float32),
        grid_tiles=len(xs),
        best_tissue=float(coverage.max()) if len(coverage) else 0.0,
    )


class TileIndexCache:
    """Per-slide tile indexes on disk, recomputed when the slide file or the params change.

    Thread-safe: the domain indexes slides on a thread pool (OpenSlide releases the GIL).
    ``hits`` and ``misses`` count lookups, for the log line and for tests.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # pickled into data-loader workers; a lock cannot be
        return {"directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])

    def key(self, path: str, params: TilingParams) -> str:
        """What the cached index depends on: the slide's identity and every tiling parameter."""
        return json.dumps(
            {
                "version": CACHE_VERSION,
                "slide": os.path.abspath(path),
                "files": _file_stamps(path),
                "params": asdict(params),
            },
            sort_keys=True,
        )

    def file_for(self, key: str) -> Path:
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.npz"

    def get(self, path: str, params: TilingParams, overlay: Path | None = None) -> TileIndex:
        """The slide's index from the cache, or computed and stored.

        With ``overlay`` set, a cached index whose overlay PNG is missing is recomputed, so
        turning ``data.tissue.save_masks`` on after a first run still draws every mask.
        """
        key = self.key(path, params)
        file = self.file_for(key)
        if overlay is None or overlay.exists():
            cached = TileIndex.load(file, key)
            if cached is not None:
                with self._lock:
                    self.hits += 1
                return cached
        index = compute_tile_index(path, params, overlay)
        index.save(file, key)
        with self._lock:
            self.misses += 1
        return index


def _file_stamps(path: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of the slide and of the files a multi-file format keeps beside it."""
    slide = Path(path)
    files = [slide]
    if slide.suffix.lower() == ".mrxs":  # MIRAX: slide.mrxs + slide/Slidedat.ini + Data*.dat
        companion = slide.with_suffix("")
        if companion.is_dir():
            files.extend(sorted(companion.iterdir()))
    stamps = []
    for file in files:
        try:
            stat = file.stat()
        except OSError as error:
            raise SlideError(f"cannot read {file}: {error}") from error
        stamps.append((file.name, stat.st_size, stat.st_mtime_ns))
    return stamps


def draw_per_slide(count: int, wanted: int, slide_key: str) -> np.ndarray:
    """Positions of ``wanted`` tiles among a slide's ``count``, the same on every call.

    So each slide weighs the same in an epoch, a slide with fewer tiles repeats some (all of
    them first, then a draw with replacement); one with more gives a random subset.
    """
    seed = int.from_bytes(hashlib.sha256(slide_key.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    if count >= wanted:
        return np.sort(rng.choice(count, size=wanted, replace=False))
    extra = rng.choice(count, size=wanted - count, replace=True)
    return np.concatenate([np.arange(count), np.sort(extra)])
