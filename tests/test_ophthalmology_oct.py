"""OCT volumes in every format the ophthalmology domain reads, each written by its own library
(pydicom's Ophthalmic Tomography, tifffile's stacks, Pillow's PNGs, NumPy, eyepy's Heidelberg
.vol layout): spacing, eye, the retina band, B-scan samples, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("eyepy", reason="needs the ophthalmology extra")

import tifffile
from conftest import TINY_ENCODER, clean_run_summary, fmcore
from omegaconf import OmegaConf
from PIL import Image

from fmcore.config import core_config_dir
from fmcore.domains.ophthalmology.data import Ophthalmology
from fmcore.domains.ophthalmology.oct_files import read_oct
from fmcore.domains.ophthalmology.oct_preprocess import band_centre, resample
from fmcore.domains.ophthalmology.oct_sample_data import (
    SPACING_MM,
    macular_volume,
    write_dicom_oct,
    write_heyex_vol,
)

TRUE_SPACING = [SPACING_MM[1], SPACING_MM[2], SPACING_MM[0]]  # axial, lateral, B-scan


def oct_domain(root: Path, cache: Path, **settings: object) -> Ophthalmology:
    raw = OmegaConf.load(core_config_dir() / "domain" / "ophthalmology.yaml")
    raw.data.root = str(root)
    raw.data.mode = "oct"
    for key, value in settings.items():
        OmegaConf.update(raw, f"data.{key}", value)
    return Ophthalmology(raw.data, cache)


@pytest.fixture(scope="module")
def one_volume_everywhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same macular volume in every format (right eye where the format records one)."""
    folder = tmp_path_factory.mktemp("oct")
    volume = np.round(macular_volume(np.random.default_rng(3)) * 255).astype(np.uint8)
    write_dicom_oct(folder / "cube.dcm", volume, "R", "p")
    write_heyex_vol(folder / "cube.vol", volume, "R")
    tifffile.imwrite(folder / "cube.tif", volume.astype(np.uint16) * 257)
    np.save(folder / "cube.npy", volume)
    (folder / "bscans").mkdir()
    for number, bscan in enumerate(volume):
        Image.fromarray(bscan).save(folder / "bscans" / f"bscan_{number}.png")
    return folder


def test_every_format_gives_the_same_volume_sample(
    one_volume_everywhere: Path, tmp_path: Path
) -> None:
    """DICOM (spacing from its functional groups) and .vol (from its header) are resampled by
    their own spacing; TIFF, PNG folder and NumPy by data.oct_file_spacing: with the true
    spacing given, all five samples agree."""
    domain = oct_domain(one_volume_everywhere, tmp_path, oct_file_spacing=TRUE_SPACING)
    refs = {ref.image_id: ref for ref in domain.index("train")}
    assert domain.bad_inputs == []
    assert sorted(refs) == ["bscans", "cube.dcm", "cube.npy", "cube.tif", "cube.vol"]
    assert (refs["cube.dcm"].eye, refs["cube.vol"].eye, refs["cube.tif"].eye) == ("R", "R", "")
    samples = {name: domain.load(ref).data.numpy() for name, ref in refs.items()}
    for name, sample in samples.items():
        assert sample.shape == (1, 16, 64, 64), name
        # .vol stores intensities through eyepy's log transform: equal within its rounding
        tolerance = 0.03 if name == "cube.vol" else 1e-5
        assert np.abs(sample - samples["cube.dcm"]).mean() < tolerance, name


def test_the_volume_is_resampled_by_its_spacing_and_cropped_on_the_retina(
    one_volume_everywhere: Path, tmp_path: Path
) -> None:
    """24 x 256 x 192 voxels of 0.125 x 0.0039 x 0.0156 mm at the default spacing (0.1875,
    0.0156, 0.0469) are 16 x 64 x 64: the whole cube is the sample, the retina inside it."""
    domain = oct_domain(one_volume_everywhere / "cube.dcm", tmp_path)
    sample = domain.load(domain.index("train")[0]).data.numpy()[0]
    profile = sample.mean(axis=(0, 2))
    assert profile[:8].mean() < 0.1  # vitreous on top
    assert profile.max() > 4 * profile[:8].mean()  # the bright RPE band is in the window


def test_bscan_unit_gives_each_bscan_as_an_image(
    one_volume_everywhere: Path, tmp_path: Path
) -> None:
    domain = oct_domain(
        one_volume_everywhere, tmp_path, oct_unit="bscan", oct_file_spacing=TRUE_SPACING
    )
    assert domain.modality == "image2d" and domain.sample_size == (64, 64)
    refs = domain.index("train")
    assert len(refs) == 5 * 24
    by_source = {(ref.image_id, ref.bscan): ref for ref in refs}
    tiff = domain.load(by_source[("cube.tif", 10)])
    png = domain.load(by_source[("bscans", 10)])
    assert tiff.data.shape == (1, 64, 64) and tiff.meta["bscan"] == 10
    assert float((tiff.data - png.data).abs().max()) < 1e-5  # bscan_10 after bscan_9
    vol = domain.load(by_source[("cube.vol", 10)])  # from the once-decoded .vol
    assert float((vol.data - tiff.data).abs().mean()) < 0.03
    assert str(by_source[("cube.tif", 10)]).endswith("cube.tif B-scan 10")


def test_pngs_are_bscans_in_natural_order(tmp_path: Path) -> None:
    """B-scan i of 12 has grey level 10 i: read in natural order (bscan_2 before bscan_10),
    not the text order (bscan_10 before bscan_2)."""
    folder = tmp_path / "volume"
    folder.mkdir()
    for number in range(12):
        Image.fromarray(np.full((40, 40), 10 * number, np.uint8)).save(
            folder / f"bscan_{number}.png"
        )
    volume = read_oct(str(folder), "png_folder")
    assert [round(float(b.mean()) * 255) for b in volume.values] == [10 * i for i in range(12)]


def test_resampling_halves_a_ramp_by_averaging_neighbours() -> None:
    """A ramp 0..7 along the axial axis at 1 mm resampled to 2 mm: trilinear interpolation
    without corner alignment samples between neighbours, 0.5, 2.5, 4.5, 6.5."""
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32)[None, :, None], (2, 8, 3)).copy()
    out = resample(ramp, (1.0, 1.0, 1.0), (1.0, 2.0, 1.0), keep_bscans=False)
    assert out.shape == (2, 4, 3)
    np.testing.assert_allclose(out[0, :, 0], [0.5, 2.5, 4.5, 6.5], atol=1e-6)


def test_the_band_centre_is_the_bright_rows_centre() -> None:
    values = np.full((2, 100, 5), 0.1, np.float32)
    values[:, 40:51] = 0.9  # a band from row 40 to 50
    assert band_centre(values) == pytest.approx(45.0, abs=0.5)


def test_bad_oct_inputs_are_left_out_with_their_reason(tmp_path: Path) -> None:
    from pydicom import dcmread

    data = tmp_path / "data"
    (data / "ragged").mkdir(parents=True)
    tifffile.imwrite(data / "ragged.tif", np.zeros((64, 64), np.uint8))
    with tifffile.TiffWriter(data / "ragged.tif", append=True) as tiff:
        tiff.write(np.zeros((64, 48), np.uint8))
    for number, width in enumerate((64, 64, 50)):
        Image.fromarray(np.zeros((64, width), np.uint8)).save(data / "ragged" / f"b{number}.png")
    np.save(data / "four_d.npy", np.zeros((2, 2, 40, 40), np.float32))
    volume = np.round(macular_volume(np.random.default_rng(0)) * 255).astype(np.uint8)
    write_heyex_vol(data / "cut.vol", volume, "L")
    (data / "cut.vol").write_bytes((data / "cut.vol").read_bytes()[:50])
    write_dicom_oct(data / "empty.dcm", volume, "L", "p")
    empty = dcmread(data / "empty.dcm")
    del empty.PixelData
    empty.save_as(data / "empty.dcm")
    domain = oct_domain(data, tmp_path / "cache")
    assert domain.index("train") == []
    reasons = {Path(m.split(": ", 1)[0]).name: m.split(": ", 1)[1] for m in domain.bad_inputs}
    assert sorted(reasons) == ["cut.vol", "empty.dcm", "four_d.npy", "ragged", "ragged.tif"]
    assert "inconsistent B-scan sizes: page 1 is 48x64" in reasons["ragged.tif"]
    assert "inconsistent B-scan sizes: b2.png is 50x64" in reasons["ragged"]
    assert "shape (2, 2, 40, 40)" in reasons["four_d.npy"]
    assert "truncated Heidelberg .vol" in reasons["cut.vol"]
    assert "without pixel data" in reasons["empty.dcm"]


@pytest.mark.slow
@pytest.mark.parametrize("unit", ["volume", "bscan"])
def test_mae_trains_on_the_embedded_oct_volumes(tmp_path: Path, unit: str) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    fmcore(
        "train",
        "domain=ophthalmology",
        "data.mode=oct",
        f"data.oct_unit={unit}",
        "data.oct_size=[8,32,32]",
        "encoder.tokenizer.patch_size=8",
        *TINY_ENCODER,
        "method=mae",
        "trainer.batch_size=4",
        "trainer.num_workers=0",
        "trainer.device=cpu",
        "trainer.max_steps=2",
        f"run.dir={run}",
        f"run.cache_dir={cache}",
        cwd=tmp_path,
    )
    clean_run_summary(run)
    written = sorted(p.name for p in (cache / "sample-data" / "ophthalmology-oct").iterdir())
    assert written == ["oct_L.npy", "oct_L_stack.tif", "oct_R.dcm", "oct_R.vol", "oct_R_bscans"]


def test_the_labelled_oct_sample_needs_no_resampling_and_splits_by_patient(
    tmp_path: Path,
) -> None:
    from collections import Counter

    raw = OmegaConf.load(core_config_dir() / "domain" / "ophthalmology.yaml")
    raw.data.mode, raw.data.sample = "oct", "labelled"
    domain = Ophthalmology(raw.data, tmp_path)
    counts = {}
    for split in ("train", "val", "test"):
        refs = domain.index(split)
        counts[split] = Counter(ref.label for ref in refs)
    assert counts == {"train": {0: 32, 1: 32}, "val": {0: 16, 1: 16}, "test": {0: 16, 1: 16}}
    ref = domain.index("val")[0]
    volume = read_oct(ref.path, ref.reader)
    assert volume.values.shape == (16, 64, 64) and volume.spacing == (0.1875, 0.0156, 0.0469)
    assert domain.load(ref).data.shape == (1, 16, 64, 64)


def test_eval_and_embed_score_and_write_oct_volumes(tmp_path: Path) -> None:
    """kNN on the labelled OCT volumes with a random encoder runs through ``fmcore eval``, and
    ``fmcore embed`` writes one feature per volume with its patient and eye."""
    from safetensors import safe_open

    words = [
        "domain=ophthalmology",
        "data.mode=oct",
        "data.sample=labelled",
        "encoder.tokenizer.patch_size=8",
        "encoder.depth=1",
        "encoder.embed_dim=32",
        "encoder.vit.num_heads=2",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        f"run.cache_dir={tmp_path / 'cache'}",
    ]
    fmcore(
        "eval", *words, "eval=knn", "checkpoint=random", f"run.dir={tmp_path / 'knn'}", cwd=tmp_path
    )
    result = json.loads((tmp_path / "knn" / "eval.json").read_text())
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    out = tmp_path / "features"
    fmcore(
        "embed", *words, "checkpoint=random", "embed.split=val", f"embed.out={out}", cwd=tmp_path
    )
    written = []
    for shard in sorted(out.glob("shard-*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            written += json.loads(handle.metadata()["sample_meta"])
    assert len(written) == 32 and {meta["bscan"] for meta in written} == {-1}
    assert all(meta["image"] == f"{meta['patient']}_{meta['eye']}.dcm" for meta in written)
