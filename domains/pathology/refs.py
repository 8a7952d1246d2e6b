"""The references the engine samples over: one per tile, built on demand from compact arrays.

Thousands of slides make millions of tiles. A Python object per tile would cost ~150 bytes each
and be pickled into every data-loader worker, so the table keeps one row of numbers per tile
(slide number, x, y) plus one record per slide, and makes a :class:`TileRef` when indexed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from fmcore.errors import ConfigError


class TileRef(NamedTuple):
    """One tile of a slide: read ``width`` x ``height`` pixels of ``level`` at level-0 (x, y)."""

    path: str
    slide_id: str
    label: int
    level: int
    x: int
    y: int
    width: int
    height: int
    mpp: float  # microns per pixel of the decoded tile
    stain_scale: tuple[float, float] = (1.0, 1.0)  # haematoxylin, eosin (data.stain.normalize)


class ImageTileRef(NamedTuple):
    """A tile extracted elsewhere and stored as a PNG or JPEG file."""

    path: str
    slide_id: str
    label: int


@dataclass(frozen=True)
class SlideRecord:
    """What every tile of one slide shares."""

    path: str
    slide_id: str
    label: int
    level: int
    read_size: tuple[int, int]
    stain_scale: tuple[float, float] = (1.0, 1.0)  # haematoxylin, eosin (data.stain.normalize)


@dataclass
class TileTable(Sequence[TileRef | ImageTileRef]):
    """Tiles of many slides, then pre-extracted image tiles, as one indexable sequence."""

    mpp: float
    slides: list[SlideRecord] = field(default_factory=list)
    slide_of_tile: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    xs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    images: list[ImageTileRef] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        mpp: float,
        slides: list[tuple[SlideRecord, np.ndarray, np.ndarray]],
        images: list[ImageTileRef],
    ) -> TileTable:
        """A table from (slide, xs, ys) per slide and the image tiles."""
        counts = [len(xs) for _, xs, _ in slides]
        return cls(
            mpp=mpp,
            slides=[record for record, _, _ in slides],
            slide_of_tile=np.repeat(np.arange(len(slides), dtype=np.int32), counts),
            xs=np.concatenate([xs for _, xs, _ in slides] or [np.zeros(0, np.int64)]),
            ys=np.concatenate([ys for _, _, ys in slides] or [np.zeros(0, np.int64)]),
            images=list(images),
        )

    @property
    def slide_tiles(self) -> int:
        return len(self.xs)

    def __len__(self) -> int:
        return len(self.xs) + len(self.images)

    def __getitem__(self, index: int) -> TileRef | ImageTileRef:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("a TileTable is indexed by tile number, not sliced")
        position = int(index)
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"tile {index} out of range ({len(self)} tiles)")
        if position >= len(self.xs):
            return self.images[position - len(self.xs)]
        slide = self.slides[int(self.slide_of_tile[position])]
        return TileRef(
            path=slide.path,
            slide_id=slide.slide_id,
            label=slide.label,
            level=slide.level,
            x=int(self.xs[position]),
            y=int(self.ys[position]),
            width=slide.read_size[0],
            height=slide.read_size[1],
            mpp=self.mpp,
            stain_scale=slide.stain_scale,
        )

    def __iter__(self) -> Iterator[TileRef | ImageTileRef]:
        for position in range(len(self)):
            yield self[position]

    def positions_by_slide(self) -> dict[str, Sequence[int]]:
        """Each slide's tile positions in the table, slides in table order (a folder of
        pre-extracted tiles is one slide); a slide id used twice is refused, since two slides
        would then share one feature file."""
        bounds = np.searchsorted(self.slide_of_tile, np.arange(len(self.slides) + 1))
        groups: dict[str, Sequence[int]] = {}
        for number, slide in enumerate(self.slides):
            if slide.slide_id in groups:
                raise ConfigError(
                    f"two slides share the id '{slide.slide_id}' (one is {slide.path}):"
                    " give each a distinct slide_id column in the data.root CSV"
                )
            groups[slide.slide_id] = range(int(bounds[number]), int(bounds[number + 1]))
        tiles: dict[str, list[int]] = defaultdict(list)
        for offset, image in enumerate(self.images):
            tiles[image.slide_id].append(len(self.xs) + offset)
        for slide_id, positions in tiles.items():
            if slide_id in groups:
                raise ConfigError(
                    f"the tile folder '{slide_id}' has the id of a slide: rename one of them"
                )
            groups[slide_id] = positions
        return groups

    def tiles_per_slide(self) -> dict[str, int]:
        counts = np.bincount(self.slide_of_tile, minlength=len(self.slides))
        return {s.slide_id: int(c) for s, c in zip(self.slides, counts, strict=True)}
