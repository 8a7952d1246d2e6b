"""Tissue masks match known regions; tiles are kept where the tissue is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openslide", reason="needs the pathology extra: pip install -e '.[pathology]'")

from fmcore.config import compose, config_sources
from fmcore.domains.pathology.sample_slide import pyramid, write_pyramidal_tiff
from fmcore.domains.pathology.tiling import box_coverage
from fmcore.domains.pathology.tissue import TissueOptions, otsu_threshold, tissue_mask
from fmcore.factory import build_domain
from fmcore.plugin_manager import registry

GLASS = (243, 242, 245)
PINK = (225, 150, 200)  # eosin-stained stroma
INK = (30, 60, 170)  # blue marker pen


def noisy(shape: tuple[int, int], colour: tuple[int, int, int], seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-3, 4, size=(*shape, 3))
    return np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)


def thumbnail() -> tuple[np.ndarray, dict[str, tuple[slice, slice]]]:
    """A 200x200 view at 8 um/px with known regions; returns the picture and the regions."""
    regions = {
        "tissue": (slice(40, 120), slice(30, 150)),
        "small_hole": (slice(80, 83), slice(90, 93)),  # 576 um^2: filled
        "large_hole": (slice(55, 67), slice(100, 112)),  # 9,216 um^2: kept as glass
        "speck": (slice(170, 174), slice(170, 174)),  # 1,024 um^2: dropped
        "pen": (slice(150, 156), slice(20, 180)),
        "black_edge": (slice(190, 200), slice(0, 200)),
    }
    image = noisy((200, 200), GLASS, 0)
    image[regions["tissue"]] = noisy((80, 120), PINK, 1)
    nuclei = np.random.default_rng(2).integers(0, 80 * 120, 300)
    tissue_rows, tissue_cols = np.unravel_index(nuclei, (80, 120))
    image[40 + tissue_rows, 30 + tissue_cols] = (110, 80, 165)
    for name in ("small_hole", "large_hole"):
        image[regions[name]] = GLASS
    image[regions["speck"]] = PINK
    image[regions["pen"]] = noisy((6, 160), INK, 3)
    image[regions["black_edge"]] = noisy((10, 200), (8, 8, 8), 4)
    return image, regions


def test_the_mask_is_the_tissue_without_pen_dark_edges_specks_or_large_holes() -> None:
    image, regions = thumbnail()
    mask = tissue_mask(image, TissueOptions(mpp=8.0))

    expected = np.zeros((200, 200), bool)
    expected[regions["tissue"]] = True
    expected[regions["large_hole"]] = False
    intersection = (mask & expected).sum()
    union = (mask | expected).sum()
    assert intersection / union > 0.97  # smoothing only rounds the corners
    assert mask[regions["small_hole"]].all()
    assert not mask[60, 105]  # centre of the large hole
    for name in ("speck", "pen", "black_edge"):
        assert not mask[regions[name]].any(), name


def test_pen_removal_can_be_turned_off() -> None:
    image, regions = thumbnail()
    mask = tissue_mask(image, TissueOptions(mpp=8.0, remove_pen=False))
    assert mask[regions["pen"]].mean() > 0.9


def test_a_blank_slide_has_no_tissue_and_faint_staining_is_still_found() -> None:
    blank = noisy((120, 120), GLASS, 5)
    assert not tissue_mask(blank, TissueOptions()).any()  # Otsu alone would split the noise

    faint = blank.copy()
    faint[30:90, 30:90] = noisy((60, 60), (235, 205, 225), 6)  # saturation ~0.13
    mask = tissue_mask(faint, TissueOptions())
    assert mask[35:85, 35:85].all() and not mask[:25].any()


def test_otsu_splits_two_populations_between_them() -> None:
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.1, 0.03, 5000), rng.normal(0.6, 0.05, 3000)
    threshold = otsu_threshold(np.clip(np.concatenate([low, high]), 0, 1))
    assert (low < threshold).mean() > 0.99 and (high > threshold).all()


def test_box_coverage_is_the_exact_covered_fraction() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((10, 12)) < 0.5
    fine = np.kron(mask, np.ones((20, 20), bool))  # 20 sub-pixels per pixel side
    boxes = rng.integers(0, 200, size=(50, 4)) / 20.0  # corners on the sub-pixel grid
    x0, x1 = np.minimum(boxes[:, 0], boxes[:, 1]), np.maximum(boxes[:, 0], boxes[:, 1]) + 0.05
    y0, y1 = np.minimum(boxes[:, 2], boxes[:, 3]), np.maximum(boxes[:, 2], boxes[:, 3]) + 0.05
    got = box_coverage(mask, x0, y0, x1, y1)
    for k in range(len(got)):
        window = fine[round(y0[k] * 20) : round(y1[k] * 20), round(x0[k] * 20) : round(x1[k] * 20)]
        assert got[k] == pytest.approx(window.mean(), abs=1e-9)


def test_tiles_are_kept_exactly_where_the_slide_has_tissue(tmp_path: Path) -> None:
    # 0.25 mpp; 64-px tiles at 0.5 mpp span 128 level-0 px; tissue covers tile columns 4-9 and
    # rows 2-5 exactly, so 24 tiles hold it entirely and all the others hold none.
    level0 = noisy((1536, 2048), GLASS, 7)
    level0[256:768, 512:1280] = noisy((512, 768), PINK, 8)
    write_pyramidal_tiff(tmp_path / "rect.tif", pyramid(level0), mpp=0.25, compression="zlib")
    masks = tmp_path / "masks"
    words = [
        "domain=pathology",
        f"data.root={tmp_path / 'rect.tif'}",
        "data.tile_size=64",
        f"data.tissue.save_masks={masks}",
        f"run.cache_dir={tmp_path / 'cache'}",
    ]
    domain = build_domain(compose(words, config_sources(registry())), registry())
    refs = domain.index()

    kept = {(ref.x, ref.y) for ref in refs}
    expected = {(128 * col, 128 * row) for col in range(4, 10) for row in range(2, 6)}
    assert kept == expected

    from PIL import Image

    overlay = np.asarray(Image.open(masks / "rect.png"))
    assert overlay.shape == (1536 // 32, 2048 // 32, 3)  # one pixel per 8 um
    assert (overlay == (0, 170, 60)).all(axis=-1).any()  # the tissue outline is drawn
