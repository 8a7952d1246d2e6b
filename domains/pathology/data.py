"""The pathology domain: whole-slide images cut into tiles at a physical resolution.

``index`` finds the slides under ``data.root`` (see :mod:`.inputs`), detects tissue on each one's
thumbnail and keeps the grid tiles with enough of it (:mod:`.tiling`, cached per slide), and
returns one lightweight reference per tile. ``load`` reads one tile in a data-loader worker
through that worker's own OpenSlide handle. Bad slides are reported and left out; a tile that
fails to read is a :class:`BadSample` the engine skips and counts.

OpenSlide, tifffile and Pillow are imported inside functions, so ``fmcore plugins`` lists this
domain without the ``pathology`` extra installed.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig

from fmcore.config import as_dict
from fmcore.domain import Domain, Sample
from fmcore.domains.pathology.inputs import IMAGE_EXTENSIONS, SPLITS, Input, find_inputs
from fmcore.domains.pathology.labelled_sample import write_labelled_slides
from fmcore.domains.pathology.orientation import RandomDihedral
from fmcore.domains.pathology.refs import ImageTileRef, SlideRecord, TileRef, TileTable
from fmcore.domains.pathology.sample_slide import write_sample_slides
from fmcore.domains.pathology.slides import SLIDE_EXTENSIONS, SlideError, SlideHandles, read_rgb
from fmcore.domains.pathology.stain import HEDJitter
from fmcore.domains.pathology.stain_normalization import (
    estimate_tiles,
    normalization_scale,
    normalize_stains,
    stain_maxima,
)
from fmcore.domains.pathology.tiling import (
    TileIndex,
    TileIndexCache,
    TilingParams,
    draw_per_slide,
)
from fmcore.domains.pathology.tissue import TissueOptions
from fmcore.errors import BadSample, ConfigError, NoUsableSamples
from fmcore.labels import LabelTable
from fmcore.modalities.base import ViewStep

if TYPE_CHECKING:
    from PIL import Image

TileReference = TileRef | ImageTileRef
JITTER_KEYS = ("p", "scale", "bias")


class Pathology(Domain):
    name = "pathology"
    modality = "image2d"
    requires = ("openslide", "tifffile")
    partition_keys = ("slide", "label", "patient")
    extra = "pathology"
    splits = SPLITS
    sample_kinds = ("plain", "labelled")

    def __init__(self, data: DictConfig, cache_dir: Path) -> None:
        super().__init__(data, cache_dir)
        self._label_table: LabelTable | None = None  # read on first use by partition_key
        self.tile_size = int(data.tile_size)
        if self.sample_size != (self.tile_size, self.tile_size):
            raise ConfigError(
                f"data.size must be [tile_size, tile_size] = [{self.tile_size}, {self.tile_size}]"
                f" for pathology tiles, not {list(self.sample_size)}: set data.size too"
            )
        if self.channels != 3:
            raise ConfigError(f"H&E tiles are RGB: data.channels must be 3, not {self.channels}")
        self.params = tiling_params(data)
        per_slide = data.get("tiles_per_slide")
        if per_slide is not None and int(per_slide) < 1:
            raise ConfigError(f"data.tiles_per_slide must be null or >= 1, not {per_slide}")
        self.tiles_per_slide = None if per_slide is None else int(per_slide)
        self.index_workers = int(data.get("index_workers", 4))
        self.stain_jitter, self.stain_reference = stain_options(data)
        self.handles = SlideHandles()
        self.tile_cache = TileIndexCache(cache_dir / "pathology" / "tile-index")

    # --- index -------------------------------------------------------------------------------

    def find_samples(self, split: str) -> Sequence[TileReference]:
        root = self.resolve_root()  # writes the embedded sample slides once
        found = find_inputs(root)
        labels = self.label_table()
        if labels is not None:
            found = found.with_labels(labels)
        for path in found.missing:
            self.report_bad_input(path, f"listed in {root} but does not exist")
        items = found.select(split)
        if not items and not found.missing:
            raise NoUsableSamples(
                f"no slides ({', '.join(SLIDE_EXTENSIONS)}) or tiles"
                f" ({', '.join(IMAGE_EXTENSIONS)}) found under data.root={root}"
                + (f" for split '{split}'" if found.has_splits else "")
            )
        slides = [item for item in items if not item.is_image_tile]
        images = [
            ImageTileRef(item.path, item.slide_id, item.label)
            for item in items
            if item.is_image_tile
        ]
        if images and self.stain_reference is not None:
            # measured per slide from its own tiles: a folder of tiles has no slide to measure
            raise ConfigError(
                f"data.stain.normalize=true normalises whole slides; data.root={root} holds"
                f" {len(images)} tile image(s) (e.g. {images[0].path}): set"
                " data.stain.normalize=false for tile folders"
            )
        entries = []
        for slide, result in zip(slides, self._index_slides(slides), strict=True):
            if isinstance(result, str):
                self.report_bad_input(slide.path, result)
                continue
            if len(result) == 0:
                self.report_bad_input(slide.path, self._no_tiles_reason(result))
                continue
            xs, ys = result.xs, result.ys
            if self.tiles_per_slide is not None:
                chosen = draw_per_slide(len(xs), self.tiles_per_slide, slide.path)
                xs, ys = xs[chosen], ys[chosen]
            record = SlideRecord(
                slide.path, slide.slide_id, slide.label, result.level, result.read_size
            )
            if self.stain_reference is not None:
                record = self._with_stain_scale(record, result)
            entries.append((record, xs, ys))
        table = TileTable.build(self.params.mpp, entries, self._balance_images(images))
        self._log(table, len(slides))
        return table

    def index_groups(self, split: str) -> tuple[TileTable, dict[str, Sequence[int]]]:
        """Every tissue tile of ``split`` and each slide's positions among them, for ``fmcore
        embed`` (one feature file per slide). ``data.tiles_per_slide`` balances training epochs
        and does not apply here: a slide's features cover all of its tissue."""
        every_tile = copy.copy(self)
        every_tile.tiles_per_slide = None
        table = every_tile.index(split)  # bad inputs land in the shared bad_inputs list
        return table, table.positions_by_slide()

    def _index_slides(self, slides: list[Input]) -> list[TileIndex | str]:
        """Each slide's :class:`TileIndex`, or the reason it cannot be used, in input order.

        Slides are indexed on a thread pool: OpenSlide decodes and NumPy thresholds outside
        the GIL, and indexing thousands of slides is otherwise minutes of one busy core.
        """
        overlays = self._overlay_directory()

        def one(slide: Input) -> TileIndex | str:
            overlay = None
            if overlays is not None:
                overlay = overlays / f"{slide.slide_id.replace('/', '__')}.png"
            try:
                return self.tile_cache.get(slide.path, self.params, overlay)
            except SlideError as error:
                return str(error)
            except Exception as error:  # one odd slide must not end the indexing of thousands
                return f"cannot index the slide: {type(error).__name__}: {error}"

        if self.index_workers <= 1 or len(slides) <= 1:
            return [one(slide) for slide in slides]
        with ThreadPoolExecutor(max_workers=self.index_workers) as pool:
            return list(pool.map(one, slides))

    def _with_stain_scale(self, record: SlideRecord, index: TileIndex) -> SlideRecord:
        """``record`` with the factors that bring its slide's stains to the reference,
        measured on a fixed spread of the slide's tissue tiles (a tile that fails to read is
        left out of the estimate; the engine reports it when it samples it)."""
        assert self.stain_reference is not None
        tiles = []
        for position in estimate_tiles(len(index)):
            ref = TileRef(
                record.path,
                record.slide_id,
                record.label,
                record.level,
                int(index.xs[position]),
                int(index.ys[position]),
                *record.read_size,
                self.params.mpp,
            )
            try:
                tiles.append(self._read_tile(ref).float() / 255)
            except BadSample:
                continue
        scale = normalization_scale(stain_maxima(tiles) if tiles else None, self.stain_reference)
        return dataclasses.replace(record, stain_scale=scale)

    def _no_tiles_reason(self, index: TileIndex) -> str:
        tile = f"{self.tile_size} px at {self.params.mpp} um/px"
        if index.grid_tiles == 0:
            return f"the slide is smaller than one tile ({tile})"
        return (
            f"no tissue: none of its {index.grid_tiles} tiles ({tile}) is at least"
            f" {self.params.min_tissue:.0%} tissue (data.min_tissue); the best is"
            f" {index.best_tissue:.0%}"
        )

    def _overlay_directory(self) -> Path | None:
        setting = (as_dict(self.data.get("tissue")) or {}).get("save_masks")
        if setting in (None, False, ""):
            return None
        if setting is True:
            return self.cache_dir / "pathology" / "tissue-masks"
        return Path(str(setting)).expanduser()

    def _balance_images(self, images: list[ImageTileRef]) -> list[ImageTileRef]:
        """Pre-extracted tiles, ``tiles_per_slide`` per folder (slide) when that is set."""
        if self.tiles_per_slide is None:
            return images
        by_slide: dict[str, list[ImageTileRef]] = defaultdict(list)
        for image in images:
            by_slide[image.slide_id].append(image)
        balanced = []
        for slide_id, tiles in by_slide.items():
            chosen = draw_per_slide(len(tiles), self.tiles_per_slide, slide_id)
            balanced.extend(tiles[int(i)] for i in chosen)
        return balanced

    def _log(self, table: TileTable, slides: int) -> None:
        used = len(table.slides)
        cached = f"{self.tile_cache.hits} from the tile-index cache"
        line = (
            f"pathology: {table.slide_tiles:,} tiles of {self.tile_size} px at"
            f" {self.params.mpp} um/px from {used} of {slides} slide(s) ({cached})"
        )
        if table.images:
            line += f"; {len(table.images):,} pre-extracted tile image(s)"
        print(line, file=sys.stderr, flush=True)

    # --- load --------------------------------------------------------------------------------

    def partition_key(self, ref: TileReference, by: str) -> str | int:
        if by == "patient":
            return self._patient(ref.path)
        return ref.slide_id if by == "slide" else ref.label

    def _patient(self, path: str) -> str:
        if self._label_table is None:
            self._label_table = self.label_table()
        entry = self._label_table.lookup(path) if self._label_table else None
        if entry is None or entry.patient is None:
            raise ConfigError(
                f"federated.partition=patient needs a patient for {path}: set data.labels to a"
                " CSV with a patient column (path,label,split,patient) that lists this slide"
            )
        return entry.patient

    def load(self, ref: TileReference) -> Sample:
        if isinstance(ref, ImageTileRef):
            return self._load_image_tile(ref)
        tile = self._read_tile(ref)
        if ref.stain_scale != (1.0, 1.0):  # in floats, handed over as uint8 again
            normalized = normalize_stains(tile.float() / 255, ref.stain_scale)
            tile = (normalized * 255).round().clamp(0, 255).to(torch.uint8)
        meta = {
            "slide": ref.slide_id,
            "path": ref.path,
            "level": ref.level,
            "x": ref.x,
            "y": ref.y,
            "mpp": ref.mpp,
            "tile_size": self.tile_size,
        }
        return Sample(data=tile, label=ref.label, meta=meta)

    def _read_tile(self, ref: TileRef) -> torch.Tensor:
        """The tile's pixels as the slide holds them: (3, tile, tile) uint8."""
        import openslide

        where = (
            f"tile at level-0 ({ref.x}, {ref.y}), level {ref.level}, {ref.width}x{ref.height} px"
        )
        try:
            slide = self.handles.get(ref.path)
        except SlideError as error:
            raise BadSample(ref.path, f"{where}: {error}") from error
        try:
            image = read_rgb(
                slide,
                (ref.x, ref.y),
                ref.level,
                (ref.width, ref.height),
                self.handles.background(ref.path),
            )
        except openslide.OpenSlideError as error:
            # OpenSlide handles are dead after any error: the next tile of this slide reopens it.
            self.handles.drop(ref.path)
            raise BadSample(ref.path, f"cannot read {where}: {error}") from error
        return self._to_tensor(image)

    def _load_image_tile(self, ref: ImageTileRef) -> Sample:
        from PIL import Image

        try:
            with Image.open(ref.path) as opened:
                opened.draft("RGB", (self.tile_size, self.tile_size))  # JPEG: decode smaller
                image = opened.convert("RGB")
        # Not an image or truncated: OSError; broken PNG chunks: SyntaxError; huge: bomb error.
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise BadSample(
                ref.path, f"cannot decode tile image: {type(error).__name__}: {error}"
            ) from error
        width, height = image.size
        side = min(height, width)  # a non-square tile is centre-cropped, not distorted
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        meta = {
            "slide": ref.slide_id,
            "path": ref.path,
            "level": -1,
            "x": -1,
            "y": -1,
            "mpp": -1.0,  # unknown: the tiles were cut elsewhere
            "tile_size": self.tile_size,
        }
        return Sample(data=self._to_tensor(image), label=ref.label, meta=meta)

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        """An RGB image -> (3, tile, tile) uint8, resized if needed (the device makes the
        floats: the transport rule).

        Shrinking averages the pixels each output pixel covers: exactly for a whole factor
        (``reduce``: a 40x slide without a 20x level gives 2x2 means), else with a box filter
        (separable, so within one intensity level of the exact mean). Enlarging (a slide
        scanned coarser than data.mpp) is bilinear.
        """
        from PIL import Image

        size = self.tile_size
        width, height = image.size
        if (height, width) != (size, size):
            factor = height // size
            if height == width == factor * size:
                image = image.reduce(factor)
            elif height > size or width > size:
                image = image.resize((size, size), Image.Resampling.BOX)
            else:
                image = image.resize((size, size), Image.Resampling.BILINEAR)
        # Channels first by a NumPy copy: the collate's torch.stack of channel-last views is
        # ten times slower, and a torch op in the main process (num_workers=0) wakes torch's
        # intra-op threads, which costs more than the copy itself.
        return torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))

    # --- sample data and views ---------------------------------------------------------------

    def write_sample_data(self, directory: Path) -> None:
        if self.sample_kind == "labelled":
            write_labelled_slides(directory)
        else:
            write_sample_slides(directory)

    def view_steps(self) -> list[ViewStep]:
        return [
            RandomDihedral(float(self.data.get("dihedral", 0.5))),
            HEDJitter(**self.stain_jitter),
        ]


def stain_options(data: DictConfig) -> tuple[dict[str, Any], tuple[float, float] | None]:
    """``data.stain``'s jitter options (p, scale, bias) and, with ``normalize`` on, the
    reference haematoxylin and eosin maxima every slide is brought to (else None)."""
    stain = dict(as_dict(data.get("stain")) or {})
    unknown = set(stain) - {*JITTER_KEYS, "normalize", "reference"}
    if unknown:
        raise ConfigError(
            f"unknown data.stain option(s) {sorted(unknown)}; valid:"
            f" {', '.join(JITTER_KEYS)}, normalize, reference"
        )
    normalize = stain.pop("normalize", False)
    reference = stain.pop("reference", None)
    if not isinstance(normalize, bool):
        raise ConfigError(f"data.stain.normalize must be true or false, not {normalize!r}")
    if not normalize:
        return stain, None
    if (
        not isinstance(reference, list | tuple)
        or len(reference) != 2
        or not all(isinstance(v, int | float) and v > 0 for v in reference)
    ):
        raise ConfigError(
            "data.stain.reference must be two positive numbers (the haematoxylin and eosin"
            f" maxima every slide is normalised to), not {reference!r}"
        )
    return stain, (float(reference[0]), float(reference[1]))


def tiling_params(data: DictConfig) -> TilingParams:
    """The tiling parameters of ``data``, checked, with errors naming the key."""
    mpp = float(data.mpp)
    min_tissue = float(data.min_tissue)
    slide_mpp: Any = data.get("slide_mpp")
    if not mpp > 0:
        raise ConfigError(f"data.mpp must be positive (microns per pixel), not {mpp}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ConfigError(f"data.min_tissue is a fraction in [0, 1], not {min_tissue}")
    if slide_mpp is not None and not float(slide_mpp) > 0:
        raise ConfigError(f"data.slide_mpp must be null or positive, not {slide_mpp}")
    if int(data.tile_size) < 1:
        raise ConfigError(f"data.tile_size must be positive, not {data.tile_size}")
    try:
        tissue = TissueOptions.from_config(as_dict(data.get("tissue")))
    except (KeyError, ValueError, TypeError) as error:
        raise ConfigError(str(error).strip("'\"")) from error
    return TilingParams(
        tile_size=int(data.tile_size),
        mpp=mpp,
        min_tissue=min_tissue,
        slide_mpp=None if slide_mpp is None else float(slide_mpp),
        tissue=tissue,
    )
