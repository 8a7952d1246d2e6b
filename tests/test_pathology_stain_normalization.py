"""Per-slide stain normalisation (data.stain.normalize): one section stained light and dark
reads as one tissue once normalised; the estimate against an independent NumPy percentile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openslide", reason="needs the pathology extra: pip install -e '.[pathology]'")

from fmcore.config import compose, config_sources
from fmcore.domains.pathology.refs import TileRef
from fmcore.domains.pathology.sample_slide import pyramid, synthetic_section, write_pyramidal_tiff
from fmcore.domains.pathology.stain_normalization import stain_maxima
from fmcore.errors import ConfigError
from fmcore.factory import build_domain
from fmcore.plugin_manager import registry

STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
LIGHT, DARK = (0.7, 0.8), (1.4, 1.25)  # haematoxylin and eosin strength of two labs


@pytest.fixture(scope="module")
def two_stainings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 512-px section (0.5 mpp) written twice: stained light and stained dark."""
    folder = tmp_path_factory.mktemp("stainings")
    for name, stain in (("light", LIGHT), ("dark", DARK)):
        picture = synthetic_section(np.random.default_rng(7), 512, stain=stain)
        write_pyramidal_tiff(folder / f"{name}.tif", pyramid(picture), 0.5, compression="zlib")
    return folder


def tiles_by_slide(root: Path, cache: Path, *words: str) -> dict[str, dict[tuple, torch.Tensor]]:
    base = ["domain=pathology", "data.tile_size=64", f"data.root={root}", f"run.cache_dir={cache}"]
    config = compose([*base, *words], config_sources(registry()))
    domain = build_domain(config, registry())
    found: dict[str, dict[tuple, torch.Tensor]] = {}
    for ref in domain.index("train"):
        assert isinstance(ref, TileRef)
        found.setdefault(Path(ref.path).stem, {})[(ref.x, ref.y)] = domain.to_unit(
            domain.load(ref).data
        )
    return found


def mean_difference(tiles: dict[str, dict[tuple, torch.Tensor]]) -> float:
    shared = sorted(set(tiles["light"]) & set(tiles["dark"]))
    assert len(shared) >= 8
    return float(
        torch.stack([(tiles["light"][at] - tiles["dark"][at]).abs().mean() for at in shared])
        .mean()
        .item()
    )


def test_normalised_tiles_of_two_stainings_of_one_section_nearly_match(
    two_stainings: Path, tmp_path: Path
) -> None:
    raw = tiles_by_slide(two_stainings, tmp_path / "raw")
    normalised = tiles_by_slide(two_stainings, tmp_path / "norm", "data.stain.normalize=true")
    before, after = mean_difference(raw), mean_difference(normalised)
    assert before > 0.05  # the two labs' tiles differ visibly
    assert after < before / 3  # what is left: glass under the tissue, rounding, noise
    # Normalised, each slide's maxima are the reference, measured independently in NumPy.
    for slide in ("light", "dark"):
        pixels = torch.stack(list(normalised[slide].values())).permute(0, 2, 3, 1).double()
        density = -np.log(np.maximum(pixels.reshape(-1, 3).numpy(), 1e-6))
        amounts = density[(density >= 0.15).all(axis=1)] @ np.linalg.inv(STAINS)
        np.testing.assert_allclose(np.percentile(amounts[:, :2], 99, axis=0), [2.5, 0.55], rtol=0.1)


def test_the_maxima_are_the_99th_percentiles_of_the_stained_pixels() -> None:
    generator = torch.Generator().manual_seed(0)
    amounts = torch.rand(2, 3, 16, 16, generator=generator) * torch.tensor([2.0, 0.8, 0.1]).view(
        1, 3, 1, 1
    )
    density = torch.einsum("bs...,sc->bc...", amounts.double(), torch.tensor(STAINS))
    tiles = torch.exp(-density).float()
    pixel_density = density.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    stained = (pixel_density >= 0.15).all(axis=1)
    expected = np.percentile(pixel_density[stained] @ np.linalg.inv(STAINS), 99, axis=0)[:2]
    np.testing.assert_allclose(stain_maxima(list(tiles)), expected, rtol=1e-3)
    assert stain_maxima([torch.ones(3, 8, 8)]) is None  # glass only: nothing to measure


def test_a_bad_reference_is_refused_naming_the_key(two_stainings: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.stain\.reference"):
        tiles_by_slide(
            two_stainings, tmp_path, "data.stain.normalize=true", "data.stain.reference=[1]"
        )
    with pytest.raises(ConfigError, match=r"data\.stain\.normalize"):
        tiles_by_slide(two_stainings, tmp_path, "data.stain.normalize=macenko")


def test_a_folder_of_tiles_is_refused_rather_than_left_unnormalised(tmp_path: Path) -> None:
    """Tiles cut elsewhere carry no slide to measure: normalisation would silently skip them."""
    from PIL import Image

    folder = tmp_path / "tiles"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 120, 180)).save(folder / "tile.png")
    with pytest.raises(ConfigError, match=r"data\.stain\.normalize=false for tile folders"):
        tiles_by_slide(folder, tmp_path / "cache", "data.stain.normalize=true")
