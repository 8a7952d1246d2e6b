"""The ophthalmology domain on files written by the real libraries (Pillow's JPEG/PNG with EXIF,
tifffile's 16-bit TIFF, pydicom's ophthalmic photographs) and on scikit-image's real fundus
photograph: formats, field of view, laterality, labels and what happens to bad files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage", reason="needs the ophthalmology extra")

import skimage
import tifffile
import torch
from omegaconf import OmegaConf
from PIL import Image

from fmcore.config import core_config_dir
from fmcore.domains.ophthalmology.data import Ophthalmology
from fmcore.domains.ophthalmology.sample_data import (
    fundus_photograph,
    write_dicom_photograph,
    write_jpeg,
    write_sample_photographs,
)
from fmcore.errors import BadSample, ConfigError

SIDE = 64
RETINA_JPG = Path(skimage.__file__).parent / "data" / "retina.jpg"  # shipped in the wheel


def ophthalmology(root: Path, cache: Path, **settings: object) -> Ophthalmology:
    raw = OmegaConf.load(core_config_dir() / "domain" / "ophthalmology.yaml")
    raw.data.root = str(root)
    raw.data.side = SIDE
    for key, value in settings.items():
        OmegaConf.update(raw, f"data.{key}", value)
    return Ophthalmology(raw.data, cache)


def by_name(domain: Ophthalmology) -> dict[str, object]:
    return {Path(ref.path).name: ref for ref in domain.index("train")}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fundus")
    write_sample_photographs(folder)
    return folder


def disc_column(image: np.ndarray) -> float:
    """Column of the brightest region (the optic disc) as a share of the width, from the blue
    channel (the disc is the only bright blue-ish structure of a synthetic retina)."""
    blue = image[2]
    _, columns = np.nonzero(blue >= np.quantile(blue, 0.995))
    return float(columns.mean()) / blue.shape[1]


# --- the real photograph: field of view ---------------------------------------------------


def test_the_real_retina_photograph_is_cropped_to_its_round_field_of_view(tmp_path: Path) -> None:
    """scikit-image's fundus photograph (1411 px, black surround): the FOV is a disc filling
    the square sample, so the valid share is about pi/4; outside it every pixel is 0."""
    domain = ophthalmology(RETINA_JPG, tmp_path)
    (ref,) = domain.index("train")
    sample = domain.load(ref)
    image, valid = domain.to_unit(sample.data).numpy(), sample.valid.numpy()[0]
    assert image.shape == (3, SIDE, SIDE) and valid.shape == (SIDE, SIDE)
    assert valid.mean() == pytest.approx(math.pi / 4, abs=0.04)
    assert valid[SIDE // 2, SIDE // 2] == 1 and valid[0, 0] == valid[-1, -1] == 0
    assert (image[:, valid == 0] == 0).all()
    inside = image[:, valid == 1]
    assert inside[0].mean() > 0.3 and inside[0].mean() > inside[2].mean()  # a red retina
    assert sample.meta == {"image": "retina.jpg", "patient": "retina.jpg", "eye": ""}


def test_a_photograph_without_black_surround_keeps_its_whole_frame(tmp_path: Path) -> None:
    crop = np.asarray(Image.open(RETINA_JPG))[500:900, 500:900]  # inside the FOV only
    Image.fromarray(crop).save(tmp_path / "crop.png")
    domain = ophthalmology(tmp_path / "crop.png", tmp_path / "cache")
    sample = domain.load(domain.index("train")[0])
    assert float(sample.valid.float().mean()) > 0.97


# --- every format ------------------------------------------------------------------------


def test_every_format_of_the_sample_reads_with_its_eye(sample: Path, tmp_path: Path) -> None:
    domain = ophthalmology(sample, tmp_path)
    refs = by_name(domain)
    assert domain.bad_inputs == []
    assert sorted(refs) == [
        "patient_a_L.png",
        "patient_a_R.jpg",
        "patient_b_L_16bit.tif",
        "patient_b_R_exif.jpg",
        "patient_c_L_redfree.dcm",
        "patient_c_R.dcm",
    ]
    assert (refs["patient_c_R.dcm"].eye, refs["patient_c_L_redfree.dcm"].eye) == ("R", "L")
    for name, ref in refs.items():
        sample_ = domain.load(ref)
        assert sample_.data.shape == (3, SIDE, SIDE), name
        assert float(sample_.valid.float().mean()) == pytest.approx(math.pi / 4, abs=0.05), name
        # the optic disc sits on the nasal side: right of centre in a right eye
        expected_right = "_R" in name
        assert (disc_column(domain.to_unit(sample_.data).numpy()) > 0.5) == expected_right, name
    red_free = domain.load(refs["patient_c_L_redfree.dcm"]).data
    assert bool((red_free[0] == red_free[1]).all() and (red_free[1] == red_free[2]).all())


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    """A JPEG stored a quarter-turn anticlockwise with EXIF orientation 6 decodes upright: the
    same picture as one stored upright (within JPEG error), and not as its stored pixels."""
    image = fundus_photograph(np.random.default_rng(0), "R", lesions=False)
    write_jpeg(tmp_path / "upright.jpg", image)
    write_jpeg(tmp_path / "turned.jpg", image, orientation=6)
    stored = np.asarray(Image.open(tmp_path / "turned.jpg"))
    assert stored.shape[:2] == image.shape[1::-1]  # Pillow alone gives the stored pixels
    domain = ophthalmology(tmp_path, tmp_path / "cache")
    refs = by_name(domain)
    upright, turned = (
        domain.to_unit(domain.load(refs[n]).data) for n in ("upright.jpg", "turned.jpg")
    )
    assert float((upright - turned).abs().mean()) < 0.02


def test_sixteen_bit_tiff_keeps_its_precision(tmp_path: Path) -> None:
    """A flat 16-bit TIFF retina at 40000 of 65535 inside a black surround: the FOV's pixels are
    40000 / 65535, a level 8 bits cannot hold (it lies between 155/255 and 156/255)."""
    rows, columns = np.mgrid[0:96, 0:96]
    disc = np.hypot(rows - 47.5, columns - 47.5) < 44
    pixels = np.where(disc[..., None], 40000, 0).astype(np.uint16).repeat(3, axis=2)
    tifffile.imwrite(tmp_path / "flat.tif", pixels, photometric="rgb")
    domain = ophthalmology(tmp_path / "flat.tif", tmp_path / "cache")
    sample = domain.load(domain.index("train")[0])
    assert sample.data.dtype == torch.uint16  # 16 bits handed over as 16 bits
    unit = domain.to_unit(sample.data)
    core = unit[:, SIDE // 2 - 8 : SIDE // 2 + 8, SIDE // 2 - 8 : SIDE // 2 + 8]
    assert float(core.mean()) == pytest.approx(40000 / 65535, abs=1e-5)


def test_a_compressed_tiff_with_separate_colour_planes_reads_as_rgb(tmp_path: Path) -> None:
    """tifffile writes the photograph LZW-compressed with its colours as three planes (3, H, W
    on disk): it decodes as the same picture as the contiguous PNG."""
    image = fundus_photograph(np.random.default_rng(1), "L", lesions=False)
    Image.fromarray(image).save(tmp_path / "contiguous.png")
    tifffile.imwrite(
        tmp_path / "planar.tif",
        np.moveaxis(image, -1, 0),
        photometric="rgb",
        planarconfig="separate",
        compression="lzw",
    )
    domain = ophthalmology(tmp_path, tmp_path / "cache")
    refs = by_name(domain)
    assert domain.bad_inputs == []
    planar, contiguous = (
        domain.to_unit(domain.load(refs[n]).data) for n in ("planar.tif", "contiguous.png")
    )
    assert float((planar - contiguous).abs().max()) < 1e-6


def test_mirror_left_eyes_turns_every_eye_to_a_right_eyes_orientation(
    sample: Path, tmp_path: Path
) -> None:
    """Only eyes known to be left (here the DICOM's laterality) are mirrored: a PNG whose eye
    nothing names keeps its orientation."""
    domain = ophthalmology(sample, tmp_path, mirror_left_eyes=True)
    refs = by_name(domain)
    left = domain.load(refs["patient_c_L_redfree.dcm"])
    assert left.meta["eye"] == "L" and disc_column(domain.to_unit(left.data).numpy()) > 0.5
    assert disc_column(domain.to_unit(domain.load(refs["patient_a_L.png"]).data).numpy()) < 0.5


# --- labels ------------------------------------------------------------------------------


def test_a_labels_csv_gives_patients_splits_and_eyes(sample: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label,patient,split,eye\n"
        f"{sample}/patient_a_R.jpg,healthy,a,train,R\n"
        f"{sample}/patient_a_L.png,healthy,a,train,L\n"
        f"{sample}/patient_b_R_exif.jpg,disease,b,val,\n"
        f"{sample}/patient_b_L_16bit.tif,disease,b,val,OS\n"
    )
    domain = ophthalmology(sample, tmp_path / "cache", labels=str(labels))
    train = {Path(r.path).name: r for r in domain.index("train")}
    val, val_os = sorted(domain.index("val"), key=lambda r: r.path, reverse=True)
    assert val_os.eye == "L"  # OS, oculus sinister
    assert sorted(train) == ["patient_a_L.png", "patient_a_R.jpg"]
    assert train["patient_a_L.png"].eye == "L" and train["patient_a_L.png"].patient == "a"
    assert (Path(val.path).name, val.label, val.eye) == ("patient_b_R_exif.jpg", 0, "")
    assert domain.partition_key(train["patient_a_L.png"], "patient") == "a"
    assert domain.partition_key(train["patient_a_L.png"], "eye") == "a/L"


def test_an_eye_that_is_neither_left_nor_right_is_a_config_error(
    sample: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label,eye\n{sample}/patient_a_R.jpg,1,X\n")
    domain = ophthalmology(sample, tmp_path / "cache", labels=str(labels))
    with pytest.raises(ConfigError, match=r"eye .X.*not L or R"):
        domain.index("train")


def test_the_domain_refuses_modes_and_sizes_it_does_not_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.mode=angiography"):
        ophthalmology(tmp_path, tmp_path, mode="angiography")
    with pytest.raises(ConfigError, match=r"data\.oct_unit=slab"):
        ophthalmology(tmp_path, tmp_path, mode="oct", oct_unit="slab")
    with pytest.raises(ConfigError, match="square"):
        ophthalmology(tmp_path, tmp_path, size=[64, 96])
    with pytest.raises(ConfigError, match=r"\(B-scans, axial, lateral\)"):
        ophthalmology(tmp_path, tmp_path, mode="oct", size=[64, 64])


# --- bad inputs ----------------------------------------------------------------------------


def test_each_bad_file_is_left_out_with_its_reason(sample: Path, tmp_path: Path) -> None:
    from pydicom import dcmread

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.jpg").write_text("not a photograph")
    whole = (sample / "patient_a_R.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    Image.new("RGB", (1, 1), (200, 80, 40)).save(bad / "pixel.png")
    no_pixels = dcmread(sample / "patient_c_R.dcm")
    del no_pixels.PixelData
    no_pixels.save_as(bad / "no_pixels.dcm")
    (bad / "readme.txt").write_text("ignored: not a photograph's extension")
    domain = ophthalmology(bad, tmp_path / "cache")
    assert domain.index("train") == []
    reasons = {Path(m.split(": ", 1)[0]).name: m.split(": ", 1)[1] for m in domain.bad_inputs}
    assert sorted(reasons) == ["no_pixels.dcm", "notes.jpg", "pixel.png", "truncated.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "truncated JPEG" in reasons["truncated.jpg"]
    assert "1x1 pixels: too small" in reasons["pixel.png"]
    assert "without pixel data" in reasons["no_pixels.dcm"]


def test_a_photograph_with_no_field_of_view_is_a_bad_sample(tmp_path: Path) -> None:
    Image.new("RGB", (128, 96)).save(tmp_path / "black.png")
    speck = np.zeros((96, 128, 3), np.uint8)
    speck[36:60, 52:76] = 255  # a bright square of 4.7% is not a field of view
    Image.fromarray(speck).save(tmp_path / "speck.png")
    domain = ophthalmology(tmp_path, tmp_path / "cache")
    refs = by_name(domain)
    with pytest.raises(BadSample, match=r"black\.png.*a black image"):
        domain.load(refs["black.png"])
    with pytest.raises(BadSample, match=r"speck\.png.*no field of view.*covers 4\.7%"):
        domain.load(refs["speck.png"])


def test_a_multi_frame_dicom_is_not_a_photograph(tmp_path: Path) -> None:
    from pydicom import dcmread

    write_dicom_photograph(tmp_path / "one.dcm", np.zeros((64, 64), np.uint8), "R", "p")
    ds = dcmread(tmp_path / "one.dcm")
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(tmp_path / "two.dcm")
    (tmp_path / "one.dcm").unlink()
    domain = ophthalmology(tmp_path, tmp_path / "cache")
    assert domain.index("train") == []
    assert "2 frames" in domain.bad_inputs[0] and "two.dcm" in domain.bad_inputs[0]
