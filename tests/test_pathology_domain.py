"""The pathology domain's inputs: folders, CSVs, tile images, bad slides and the embedded sample."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openslide", reason="needs the pathology extra: pip install -e '.[pathology]'")

from fmcore.config import compose, config_sources
from fmcore.domains.pathology.data import Pathology
from fmcore.domains.pathology.refs import ImageTileRef
from fmcore.domains.pathology.sample_slide import pyramid, write_pyramidal_tiff
from fmcore.errors import BadSample, ConfigError, NoUsableSamples
from fmcore.factory import build_domain
from fmcore.plugin_manager import registry

GLASS = (243, 242, 245)


def section(size: int, seed: int) -> np.ndarray:
    """Glass with a pink tissue square in the middle half."""
    rng = np.random.default_rng(seed)
    image = np.clip(np.asarray(GLASS) + rng.integers(-3, 4, (size, size, 3)), 0, 255)
    quarter = size // 4
    image[quarter : 3 * quarter, quarter : 3 * quarter] = (225, 150, 200)
    return image.astype(np.uint8)


def write_slide(path: Path, image: np.ndarray, mpp: float | None = 0.25) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramidal_tiff(path, pyramid(image), mpp=mpp, compression="zlib")
    return path


def make_domain(
    tmp_path: Path, root: Path | None, *overrides: str, cache: Path | None = None
) -> Pathology:
    cache = cache or tmp_path / "cache"
    words = [
        "domain=pathology",
        "data.tile_size=64",
        f"run.cache_dir={cache}",
        *([f"data.root={root}"] if root else []),
        *overrides,
    ]
    return build_domain(compose(words, config_sources(registry())), registry())


def bad_slide_folder(folder: Path) -> dict[str, Path]:
    """One good slide beside every kind of bad input; returns them by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_slide(folder / "good.tif", section(1024, 0))
    truncated = folder / "truncated.svs"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 5])
    text = folder / "notes.svs"
    text.write_text("not a slide\n")
    import tifffile

    strips = folder / "scan.tiff"  # a TIFF, but neither tiled nor a pyramid
    tifffile.imwrite(strips, section(256, 1))
    no_mpp = write_slide(folder / "nested" / "no_mpp.tif", section(1024, 2), mpp=None)
    blank = write_slide(folder / "blank.tif", section(1024, 3) * 0 + 243)
    tiny = write_slide(folder / "tiny.tif", section(96, 4))
    return {
        "good": good,
        "truncated": truncated,
        "text": text,
        "strips": strips,
        "no_mpp": no_mpp,
        "blank": blank,
        "tiny": tiny,
    }


def test_bad_slides_are_reported_with_reasons_and_left_out(tmp_path: Path) -> None:
    (tmp_path / "slides").mkdir()
    files = bad_slide_folder(tmp_path / "slides")
    domain = make_domain(tmp_path, tmp_path / "slides")
    refs = domain.index()

    assert {ref.slide_id for ref in refs} == {"good"}
    assert len(refs) == 16  # the middle half of an 8 x 8 grid
    reasons = dict(message.split(": ", 1) for message in domain.bad_inputs)
    assert set(reasons) == {str(p) for k, p in files.items() if k != "good"}
    assert (
        "not a slide OpenSlide can read, or a truncated/corrupt one"
        in reasons[str(files["truncated"])]
    )
    assert "not a slide" in reasons[str(files["text"])]
    assert "not a slide" in reasons[str(files["strips"])]
    assert "data.slide_mpp" in reasons[str(files["no_mpp"])]
    assert reasons[str(files["blank"])].startswith("no tissue: none of its 64 tiles")
    assert "smaller than one tile" in reasons[str(files["tiny"])]


def test_a_slide_without_mpp_is_used_once_data_slide_mpp_is_set(tmp_path: Path) -> None:
    slide = write_slide(tmp_path / "no_mpp.tif", section(1024, 0), mpp=None)
    domain = make_domain(tmp_path, slide)
    assert len(domain.index()) == 0
    assert domain.bad_inputs == [
        f"{slide}: the slide's metadata has no resolution (openslide.mpp-x): set data.slide_mpp"
        " to its microns per pixel at full resolution (e.g. data.slide_mpp=0.25 for 40x)"
    ]

    refs = make_domain(tmp_path, slide, "data.slide_mpp=0.25").index()
    assert len(refs) == 16 and refs[0].level == 1


def test_a_csv_lists_slides_with_labels_and_splits(tmp_path: Path) -> None:
    write_slide(tmp_path / "a.tif", section(1024, 0))
    write_slide(tmp_path / "sub" / "b.tif", section(1024, 1))
    write_slide(tmp_path / "c.tif", section(1024, 2))
    listing = tmp_path / "slides.csv"
    listing.write_text(
        "path,label,split\n"
        "a.tif,tumour,train\n"
        f"{tmp_path / 'sub' / 'b.tif'},normal,val\n"
        "c.tif,tumour,\n"
        "gone.tif,normal,train\n"
    )
    domain = make_domain(tmp_path, listing)
    train = domain.index("train")
    assert {(r.slide_id, r.label) for r in train} == {("a", 1), ("c", 1)}  # normal 0, tumour 1
    assert domain.bad_inputs == [f"{tmp_path / 'gone.tif'}: listed in {listing} but does not exist"]
    assert {r.slide_id for r in make_domain(tmp_path, listing).index("val")} == {"b"}
    assert len(make_domain(tmp_path, listing).index("all")) == 48
    sample = domain.load(train[0])
    assert sample.label == 1 and sample.meta["slide"] == "a"


def test_a_plain_csv_is_one_path_per_line_and_a_folder_has_no_val_split(tmp_path: Path) -> None:
    write_slide(tmp_path / "a.tif", section(1024, 0))
    listing = tmp_path / "list.csv"
    listing.write_text(f"{tmp_path / 'a.tif'}\n")
    assert len(make_domain(tmp_path, listing).index()) == 16
    with pytest.raises(ConfigError, match="'split' column"):
        make_domain(tmp_path, tmp_path / "a.tif").index("val")


def test_folders_of_pre_extracted_tiles_are_used_as_they_are(tmp_path: Path) -> None:
    from PIL import Image

    tiles = tmp_path / "tiles"
    for slide in ("case_1", "case_2"):
        (tiles / slide).mkdir(parents=True)
        for i in range(3):
            pixels = section(128, i)[:, :100]  # not square: centre-cropped, not squashed
            Image.fromarray(pixels).save(tiles / slide / f"{i}.png")
    (tiles / "case_2" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tiles / ".hidden.png").write_bytes(b"ignored")
    domain = make_domain(tmp_path, tiles)
    refs = domain.index()
    assert len(refs) == 7 and all(isinstance(r, ImageTileRef) for r in refs)
    assert {r.slide_id for r in refs} == {"case_1", "case_2"}

    sample = domain.load(refs[0])
    assert sample.data.shape == (3, 64, 64) and sample.meta["slide"] == "case_1"
    assert sample.meta["mpp"] == -1.0
    broken = next(r for r in refs if r.path.endswith("broken.jpg"))
    with pytest.raises(BadSample, match=r"broken\.jpg: cannot decode tile image"):
        domain.load(broken)


def test_the_domain_checks_its_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.size must be \[tile_size, tile_size\]"):
        make_domain(tmp_path, None, "data.size=[32,32]")
    with pytest.raises(ConfigError, match=r"data\.min_tissue"):
        make_domain(tmp_path, None, "data.min_tissue=50")
    with pytest.raises(ConfigError, match=r"data\.tissue\.method"):
        make_domain(tmp_path, None, "data.tissue.method=magic")
    with pytest.raises(ConfigError, match=r"unknown data\.tissue option"):
        make_domain(tmp_path, None, "+data.tissue.thresh=3")
    with pytest.raises(ConfigError, match=r"unknown data\.stain option"):
        make_domain(tmp_path, None, "+data.stain.gamma=3").view_steps()


def test_the_plugin_loads_without_the_pathology_extra() -> None:
    # A domain module must not import OpenSlide at import time: ``fmcore plugins`` lists it.
    code = (
        "import sys\n"
        "for name in ('openslide', 'tifffile', 'imagecodecs'):\n"
        "    sys.modules[name] = None  # import fails as if not installed\n"
        "from fmcore.plugin_manager import load_registry\n"
        "registry = load_registry()\n"
        "problems = [str(p) for p in registry.problems if 'pathology' in str(p)]\n"
        "assert not problems, problems\n"
        "print(registry.domain('pathology').requires)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "openslide" in result.stdout


@pytest.fixture
def sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, shared with test_pathology_train: the sample slides are
    written once (atomically, so sharing is safe) and their tile index is reused."""
    return tmp_path_factory.getbasetemp() / "pathology-sample-cache"


def test_the_embedded_sample_is_a_real_slide_with_mpp_and_tissue(
    tmp_path: Path, sample_cache: Path
) -> None:
    pytest.importorskip("imagecodecs", reason="the sample is JPEG-compressed")
    import openslide
    import tifffile

    domain = make_domain(tmp_path, None, "data.tile_size=224", cache=sample_cache)
    refs = domain.index()
    slides = sorted((sample_cache / "sample-data" / "pathology").glob("*.tif"))
    assert len(slides) == 2 and not domain.bad_inputs
    for path in slides:
        slide = openslide.OpenSlide(str(path))
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert slide.level_count >= 4 and slide.level_downsamples[1] == pytest.approx(2.0)
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].is_tiled and tif.pages[0].compression == 7  # JPEG
    counts = refs.tiles_per_slide()
    assert set(counts) == {"sample_slide_1", "sample_slide_2"}
    assert all(10 <= c <= 36 for c in counts.values())  # tens of tiles, of a 6 x 6 grid

    sample = domain.load(refs[len(refs) // 2])
    assert sample.data.shape == (3, 224, 224)
    pixels = domain.to_unit(sample.data).mean(dim=(1, 2))
    assert pixels[1] < pixels[0] - 0.1 and pixels[1] < pixels[2] - 0.1  # pink-purple: low green


def test_the_embedded_sample_is_written_once(tmp_path: Path, sample_cache: Path) -> None:
    directory = sample_cache / "sample-data" / "pathology"
    make_domain(tmp_path, None, cache=sample_cache).index()  # writes it if no test did yet
    stamps = {p: p.stat().st_mtime_ns for p in directory.iterdir()}
    make_domain(tmp_path, None, cache=sample_cache).index()
    assert {p: p.stat().st_mtime_ns for p in directory.iterdir()} == stamps


def test_a_missing_root_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.root"):
        make_domain(tmp_path, tmp_path / "nowhere").index()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoUsableSamples, match=r"no slides \(\.svs"):
        make_domain(tmp_path, empty).index()
    shutil.rmtree(empty)
