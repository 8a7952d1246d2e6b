"""The tile index is cached per slide, reused, and recomputed when the slide or params change."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openslide", reason="needs the pathology extra: pip install -e '.[pathology]'")

from fmcore.config import compose, config_sources
from fmcore.domains.pathology.data import Pathology
from fmcore.domains.pathology.refs import ImageTileRef, SlideRecord, TileRef, TileTable
from fmcore.domains.pathology.sample_slide import pyramid, write_pyramidal_tiff
from fmcore.domains.pathology.slides import SlideInfo
from fmcore.domains.pathology.tiling import draw_per_slide, tile_geometry
from fmcore.factory import build_domain
from fmcore.plugin_manager import registry


def tissue_slide(path: Path, width: int = 1024, height: int = 1024, seed: int = 0) -> Path:
    """Pink tissue on glass over the left two thirds of the slide, at 0.25 mpp."""
    rng = np.random.default_rng(seed)
    image = np.clip(243 + rng.integers(-3, 4, size=(height, width, 3)), 0, 255).astype(np.uint8)
    image[:, : width * 2 // 3] = (225, 150, 200)
    write_pyramidal_tiff(path, pyramid(image), mpp=0.25, compression="zlib")
    return path


def make_domain(tmp_path: Path, root: Path, *overrides: str) -> Pathology:
    words = [
        "domain=pathology",
        f"data.root={root}",
        "data.tile_size=64",
        f"run.cache_dir={tmp_path / 'cache'}",
        *overrides,
    ]
    return build_domain(compose(words, config_sources(registry())), registry())


def cache_files(tmp_path: Path) -> dict[Path, int]:
    directory = tmp_path / "cache" / "pathology" / "tile-index"
    return {p: p.stat().st_mtime_ns for p in directory.glob("*.npz")}


def test_a_second_index_reads_the_cache_without_recomputing(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    tissue_slide(slides / "a.tif", seed=0)
    tissue_slide(slides / "b.tif", seed=1)
    first = make_domain(tmp_path, slides)
    refs = list(first.index())
    assert (first.tile_cache.misses, first.tile_cache.hits) == (2, 0)
    stored = cache_files(tmp_path)
    assert len(stored) == 2

    second = make_domain(tmp_path, slides)  # a new run: a new domain object
    assert list(second.index()) == refs
    assert (second.tile_cache.misses, second.tile_cache.hits) == (0, 2)
    assert cache_files(tmp_path) == stored  # nothing rewritten


def test_a_changed_slide_is_reindexed(tmp_path: Path) -> None:
    slide = tissue_slide(tmp_path / "a.tif")
    before = list(make_domain(tmp_path, slide).index())

    tissue_slide(slide, width=1536)  # rescanned: wider, so more tissue tiles
    stat = slide.stat()
    os.utime(slide, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    domain = make_domain(tmp_path, slide)
    after = list(domain.index())
    assert domain.tile_cache.misses == 1
    assert len(after) > len(before)


@pytest.mark.parametrize(
    "override",
    ["data.tile_size=32", "data.mpp=1.0", "data.min_tissue=0.9", "data.tissue.remove_pen=false"],
)
def test_changed_tiling_params_reindex_but_sampling_params_do_not(
    tmp_path: Path, override: str
) -> None:
    slide = tissue_slide(tmp_path / "a.tif")
    make_domain(tmp_path, slide).index()

    changed = make_domain(tmp_path, slide, override)  # data.size follows data.tile_size
    changed.index()
    assert (changed.tile_cache.misses, changed.tile_cache.hits) == (1, 0)

    resampled = make_domain(tmp_path, slide, "data.tiles_per_slide=5", "data.index_workers=1")
    assert len(resampled.index()) == 5
    assert (resampled.tile_cache.misses, resampled.tile_cache.hits) == (0, 1)


def test_a_damaged_cache_file_is_recomputed(tmp_path: Path) -> None:
    slide = tissue_slide(tmp_path / "a.tif")
    refs = list(make_domain(tmp_path, slide).index())
    for file in cache_files(tmp_path):
        file.write_bytes(b"not an npz")
    domain = make_domain(tmp_path, slide)
    assert list(domain.index()) == refs and domain.tile_cache.misses == 1


def test_tiles_per_slide_balances_slides_deterministically(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    tissue_slide(slides / "big.tif", width=2048, height=2048)  # 16 x 16 grid, 2/3 tissue
    tissue_slide(slides / "small.tif", width=768, height=768)  # 6 x 6 grid
    everything = make_domain(tmp_path, slides).index()
    counts = everything.tiles_per_slide()
    assert counts["big"] > 100 and counts["small"] < 30

    balanced = make_domain(tmp_path, slides, "data.tiles_per_slide=30").index()
    assert balanced.tiles_per_slide() == {"big": 30, "small": 30}
    again = make_domain(tmp_path, slides, "data.tiles_per_slide=30").index()
    assert list(again) == list(balanced)
    small = {(r.x, r.y) for r in balanced if r.slide_id == "small"}
    assert len(small) == counts["small"]  # every small-slide tile, some twice


def test_draw_per_slide() -> None:
    subset = draw_per_slide(100, 10, "slide-a")
    assert len(set(subset.tolist())) == 10 and subset.max() < 100
    assert draw_per_slide(100, 10, "slide-a").tolist() == subset.tolist()
    assert draw_per_slide(100, 10, "slide-b").tolist() != subset.tolist()
    padded = draw_per_slide(3, 8, "slide-a")
    assert len(padded) == 8 and set(padded.tolist()) == {0, 1, 2}


def test_geometry_reads_the_coarsest_sufficient_level() -> None:
    info = SlideInfo(
        dimensions=(100_000, 80_000),
        level_dimensions=((100_000, 80_000), (25_000, 20_000), (6_250, 5_000)),
        level_downsamples=(1.0, 4.0, 16.0),
        mpp=(0.25, 0.25),
        background=(255, 255, 255),
        vendor="aperio",
    )
    at_20x = tile_geometry(info, 224, 0.5)  # 448 level-0 px; level 1 is too coarse (4 > 2)
    assert (at_20x.level, at_20x.read_size, at_20x.extent) == (0, (448, 448), (448.0, 448.0))
    at_5x = tile_geometry(info, 224, 2.0)  # 1792 level-0 px = 448 at level 1
    assert (at_5x.level, at_5x.read_size) == (1, (448, 448))
    assert (at_5x.columns, at_5x.rows) == (100_000 // 1792, 80_000 // 1792)


def test_the_tile_table_is_compact_indexable_and_picklable() -> None:
    record = SlideRecord("/s/a.svs", "a", 2, 1, (224, 224))
    table = TileTable.build(
        0.5,
        [(record, np.array([0, 448]), np.array([896, 896]))],
        [ImageTileRef("/t/x.png", "t", -1)],
    )
    assert len(table) == 3 and table.slide_tiles == 2
    assert table[1] == TileRef("/s/a.svs", "a", 2, 1, 448, 896, 224, 224, 0.5)
    assert table[-1] == ImageTileRef("/t/x.png", "t", -1)
    with pytest.raises(IndexError):
        table[3]
    assert list(pickle.loads(pickle.dumps(table))) == list(table)
