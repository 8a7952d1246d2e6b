"""Tiles hold the right pixels: real OpenSlide slides with known content, read at 0.5 mpp.

Each slide is written losslessly (deflate) with tifffile; every level holds a pattern whose value
at each coordinate is a formula, so the expected tile is computed from the formula, not from the
code under test.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("openslide", reason="needs the pathology extra: pip install -e '.[pathology]'")

from fmcore.config import compose, config_sources
from fmcore.domains.pathology.data import Pathology
from fmcore.domains.pathology.refs import TileRef
from fmcore.domains.pathology.sample_slide import write_pyramidal_tiff
from fmcore.domains.pathology.slides import (
    SlideError,
    SlideHandles,
    best_level,
    open_slide,
    premultiplied_over,
    read_rgb,
    slide_mpp,
)
from fmcore.errors import BadSample
from fmcore.factory import build_domain
from fmcore.plugin_manager import registry

TILE = 64


def pattern(xs: np.ndarray, ys: np.ndarray, seed: int) -> np.ndarray:
    """A known RGB value at every (x, y): distinct per level (seed), no two neighbours alike."""
    return np.stack(
        [
            (xs * 7 + ys * 3 + seed) % 256,
            (xs * 5 + ys * 11 + 2 * seed) % 256,
            (xs * ys + seed) % 256,
        ],
        axis=-1,
    ).astype(np.uint8)


def pattern_image(width: int, height: int, seed: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return pattern(xs, ys, seed)


def make_domain(tmp_path: Path, root: Path, *overrides: str) -> Pathology:
    words = [
        "domain=pathology",
        f"data.root={root}",
        f"data.tile_size={TILE}",
        f"run.cache_dir={tmp_path / 'cache'}",
        "data.min_tissue=0",  # every grid tile: these patterns are not tissue-like
        *overrides,
    ]
    domain = build_domain(compose(words, config_sources(registry())), registry())
    assert isinstance(domain, Pathology)
    return domain


def tile_pixels(domain: Pathology, ref: TileRef) -> np.ndarray:
    sample = domain.load(ref)
    assert sample.data.shape == (3, TILE, TILE) and sample.data.dtype == torch.uint8
    return sample.data.permute(1, 2, 0).numpy().astype(np.int64)


def test_a_tile_at_half_mpp_comes_from_the_level_scanned_at_half_mpp(tmp_path: Path) -> None:
    # Scanned at 0.25 mpp with levels at 0.5 and 1.0 mpp: 0.5-mpp tiles are level 1's pixels.
    levels = [pattern_image(1024, 768, 0), pattern_image(512, 384, 1), pattern_image(256, 192, 2)]
    slide = tmp_path / "known.tif"
    write_pyramidal_tiff(slide, levels, mpp=0.25, compression="zlib")
    domain = make_domain(tmp_path, slide)
    refs = list(domain.index())

    assert len(refs) == (1024 // 128) * (768 // 128)  # 128 level-0 px per 64-px tile
    for ref in refs[::7]:
        assert (ref.level, ref.width, ref.height, ref.mpp) == (1, TILE, TILE, 0.5)
        rows, cols = np.mgrid[0:TILE, 0:TILE]
        expected = pattern(ref.x // 2 + cols, ref.y // 2 + rows, seed=1)
        np.testing.assert_array_equal(tile_pixels(domain, ref), expected)
    assert refs[9].x == 128 and refs[9].y == 128  # row-major grid of 128-px steps


def test_without_a_matching_level_a_tile_is_read_at_full_resolution_and_area_averaged(
    tmp_path: Path,
) -> None:
    slide = tmp_path / "single_level.tif"
    write_pyramidal_tiff(slide, [pattern_image(512, 384, 0)], mpp=0.25, compression="zlib")
    domain = make_domain(tmp_path, slide)
    ref = domain.index()[5]
    assert (ref.level, ref.width, ref.height) == (0, 2 * TILE, 2 * TILE)

    rows, cols = np.mgrid[0 : 2 * TILE, 0 : 2 * TILE]
    full = pattern(ref.x + cols, ref.y + rows, seed=0).astype(np.float64)
    expected = full.reshape(TILE, 2, TILE, 2, 3).mean(axis=(1, 3))  # each pixel: a 2x2 mean
    assert np.abs(tile_pixels(domain, ref) - expected).max() <= 0.5 + 1e-9


def test_a_non_integer_scale_keeps_the_physical_size(tmp_path: Path) -> None:
    # A smooth ramp, so the area average of a pixel's footprint is the ramp at its centre.
    ys, xs = np.mgrid[0:600, 0:1000]
    ramp = np.stack([xs * 0.25, ys * 0.4, np.full_like(xs, 128.0)], -1)
    slide = tmp_path / "ramp.tif"
    write_pyramidal_tiff(slide, [np.round(ramp).astype(np.uint8)], mpp=None, compression="zlib")
    domain = make_domain(tmp_path, slide, "data.slide_mpp=0.3")  # 0.5 / 0.3: 1.67 px per px
    ref = domain.index()[3]
    assert ref.width == ref.height == round(TILE * 0.5 / 0.3)

    step = ref.width / TILE  # level-0 pixels per tile pixel
    centre = (np.arange(TILE) + 0.5) * step - 0.5
    expected_red = 0.25 * (ref.x + centre)
    expected_green = 0.4 * (ref.y + centre)
    pixels = tile_pixels(domain, ref)
    assert np.abs(pixels[..., 0] - expected_red[None, :]).max() <= 1.0
    assert np.abs(pixels[..., 1] - expected_green[:, None]).max() <= 1.0
    assert (pixels[..., 2] == 128).all()


def test_tile_metadata_names_the_slide_level_coordinates_and_resolution(tmp_path: Path) -> None:
    levels = [pattern_image(512, 512, 0), pattern_image(256, 256, 1)]
    write_pyramidal_tiff(tmp_path / "meta.tif", levels, mpp=0.25, compression="zlib")
    domain = make_domain(tmp_path, tmp_path)
    ref = domain.index()[1]
    meta = domain.load(ref).meta
    assert meta == {
        "slide": "meta",
        "path": str(tmp_path / "meta.tif"),
        "level": 1,
        "x": 128,
        "y": 0,
        "mpp": 0.5,
        "tile_size": TILE,
    }
    assert all(isinstance(v, str | int | float) for v in meta.values())


def test_best_level_is_the_coarsest_that_does_not_upsample() -> None:
    downsamples = (1.0, 4.000016, 16.0, 32.0)
    assert best_level(downsamples, 1.0) == 0
    assert best_level(downsamples, 2.0) == 0
    assert best_level(downsamples, 4.0) == 1  # 4.000016 counts as 4
    assert best_level(downsamples, 8.0) == 1
    assert best_level(downsamples, 100.0) == 3
    assert best_level(downsamples, 0.5) == 0  # finer than the scan: level 0, upsampled


def test_mpp_comes_from_metadata_or_the_override_and_its_absence_is_a_clear_error() -> None:
    assert slide_mpp({"openslide.mpp-x": "0.2528", "openslide.mpp-y": "0.2530"}, None) == (
        0.2528,
        0.2530,
    )
    assert slide_mpp({}, 0.25) == (0.25, 0.25)
    assert slide_mpp({"openslide.mpp-x": "0.5"}, 0.25) == (0.25, 0.25)  # the override wins
    with pytest.raises(SlideError, match=r"no resolution.*data\.slide_mpp"):
        slide_mpp({"openslide.vendor": "generic-tiff"}, None)


def test_transparent_regions_take_the_slide_background() -> None:
    """OpenSlide's premultiplied pixels, as the bytes B, G, R, A of its little-endian ARGB."""
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[0, 0] = (30, 20, 10, 255)
    bgra[0, 1] = (0, 0, 0, 0)  # outside the scanned area
    bgra[1, 0] = (100, 0, 0, 128)  # half covered: blue 200 premultiplied by 128/255
    bgra[1, 1] = (70, 60, 50, 255)
    rgb = np.asarray(premultiplied_over(bgra, (255, 255, 255)))
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[1, 1].tolist() == [50, 60, 70]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[1, 0].tolist() == [127, 127, 227]
    opaque = np.asarray(premultiplied_over(bgra[[0, 1], [0, 1]][None], (255, 255, 255)))
    assert opaque.tolist() == [[[10, 20, 30], [50, 60, 70]]]  # Pillow's one-pass unpacking


@pytest.mark.parametrize("binding", ["low-level", "public, without openslide's private names"])
def test_the_low_level_read_gives_openslides_read_region_made_opaque(
    tmp_path: Path, binding: str
) -> None:
    """read_rgb against openslide-python's read_region on a JPEG slide: the same pixels inside
    the slide, and the background where the region runs past its edge (alpha 0 there); also
    through the public method it falls back to when openslide-python's private names change."""
    import openslide

    path = tmp_path / "jpeg.tif"
    write_pyramidal_tiff(path, [pattern_image(256, 192, 0)], mpp=0.25)
    slide = opened = openslide.OpenSlide(str(path))
    if binding != "low-level":
        slide = SimpleNamespace(read_region=opened.read_region)  # no private handle to use
    for corner in ((64, 32), (192, 128)):  # inside; over the right and bottom edges
        rgba = np.asarray(opened.read_region(corner, 0, (128, 96)))
        assert set(np.unique(rgba[..., 3])) <= {0, 255}
        inside = rgba[..., 3:] == 255
        expected = np.where(inside, rgba[..., :3], np.uint8(250))
        got = np.asarray(read_rgb(slide, corner, 0, (128, 96), (250, 250, 250)))
        assert np.array_equal(got, expected)
    assert not inside.all()  # the second region did run past the edge


def _handles_in_child(handles: SlideHandles, path: str) -> tuple[int, int]:
    before = len(handles)  # the parent's handle is not this process's
    handles.get(path)
    return before, len(handles)


def test_each_process_opens_its_own_handles(tmp_path: Path) -> None:
    slide = tmp_path / "s.tif"
    write_pyramidal_tiff(slide, [pattern_image(300, 300, 0)], mpp=0.25, compression="zlib")
    handles = SlideHandles()
    first = handles.get(str(slide))
    assert handles.get(str(slide)) is first and len(handles) == 1
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_handles_in_child, (handles, str(slide))) == (0, 1)
    assert handles.get(str(slide)) is first


def corrupt_tile(slide: Path, page: int, tile: int, seed: int = 1) -> None:
    """Overwrite one stored tile's bytes with noise: its decoder fails, the others still work."""
    import tifffile

    with tifffile.TiffFile(slide) as tif:
        offset = tif.pages[page].dataoffsets[tile]
        count = tif.pages[page].databytecounts[tile]
    noise = np.random.default_rng(seed).integers(0, 256, count - 16, dtype=np.uint8)
    with open(slide, "r+b") as handle:
        handle.seek(offset + 8)
        handle.write(noise.tobytes())


def test_a_corrupt_tile_is_a_bad_sample_and_the_dead_handle_is_reopened(tmp_path: Path) -> None:
    slide = tmp_path / "corrupt.tif"
    levels = [pattern_image(512, 512, 0), pattern_image(256, 256, 1)]  # thumbnail: level 1
    write_pyramidal_tiff(slide, levels, mpp=0.5, compression="zlib")
    corrupt_tile(slide, page=0, tile=3)  # level 0, TIFF tile (256, 256)-(512, 512)
    domain = make_domain(tmp_path, slide)
    refs = {(r.x, r.y): r for r in domain.index()}

    domain.load(refs[(0, 0)])
    with pytest.raises(BadSample, match=r"corrupt\.tif: cannot read tile at level-0 \(320, 320\)"):
        domain.load(refs[(320, 320)])
    assert len(domain.handles) == 0  # after an OpenSlideError the handle is dead: dropped
    domain.load(refs[(0, 0)])  # reopened
    assert len(domain.handles) == 1


def test_unreadable_files_are_slide_errors_not_image_fallbacks(tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "photo.png"
    Image.fromarray(pattern_image(64, 64, 0)).save(png)
    for path in (png, tmp_path / "missing.svs"):
        with pytest.raises(SlideError, match="not a slide OpenSlide can read"):
            open_slide(path)
