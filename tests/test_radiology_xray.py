"""data.mode=xray: 2D radiographs from DICOM and PNG files, on real files shipped in pydicom and
on the embedded sample.

Expected intensities are computed here with numpy from the stored pixels and the header (rescale,
WindowCenter/Width by the DICOM LINEAR formula, percentiles, MONOCHROME1 inversion), not with
the domain's pydicom/MONAI pipeline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai", reason="needs the radiology extra: pip install -e '.[radiology]'")
pytest.importorskip("pydicom")
pytest.importorskip("PIL")

import pydicom
from nibabel.testing import data_path
from omegaconf import OmegaConf
from PIL import Image
from pydicom.data import get_testdata_file

from fmcore.domains.radiology.data import Radiology
from fmcore.domains.radiology.sample_radiographs import (
    WHITE,
    WINDOW,
    chest_radiograph,
    write_dicom_radiograph,
    write_png,
    write_radiographs,
)
from fmcore.errors import BadSample, ConfigError

CONFIG = Path(__file__).parents[1] / "configs" / "domain" / "radiology.yaml"


def xray(root: Path | None, cache: Path, **data: object) -> Radiology:
    settings = OmegaConf.load(CONFIG).data
    settings.root = None if root is None else str(root)
    settings.mode = "xray"
    settings.merge_with(data)
    return Radiology(settings, cache)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, scaled to [0, 1]."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def percentile_scale(values: np.ndarray, lower: float = 1, upper: float = 99) -> np.ndarray:
    low, high = np.percentile(values, [lower, upper])
    return np.clip((values - low) / (high - low), 0, 1)


def expected_image(path: Path, voi: bool) -> np.ndarray:
    ds = pydicom.dcmread(path)
    values = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    if voi and "WindowCenter" in ds:
        center, width = (
            float(np.atleast_1d(ds[t].value)[0]) for t in ("WindowCenter", "WindowWidth")
        )
        image = linear_window(values, center, width)
    else:
        image = percentile_scale(values)
    return 1 - image if ds.PhotometricInterpretation == "MONOCHROME1" else image


def load_only(radiology: Radiology) -> np.ndarray:
    (ref,) = radiology.index()
    assert radiology.bad_inputs == []
    return radiology.load(ref).data.numpy()


@pytest.mark.parametrize(
    ("name", "voi"),
    [
        ("6154", True),  # real CR, MONOCHROME1, rescale 0.684 / 200, window 1600 / 2800
        ("6154", False),
        ("MR_small.dcm", True),  # MONOCHROME2 with a window
        ("CT_small.dcm", True),  # no window: percentiles
        ("image_dfl.dcm", True),  # 8-bit secondary capture, deflated transfer syntax
    ],
)
def test_real_dicom_images_match_the_header_formula(tmp_path: Path, name: str, voi: bool) -> None:
    source = Path(get_testdata_file(name))
    (tmp_path / "data").mkdir()
    shutil.copy(source, tmp_path / "data" / "image.dcm")
    expected = expected_image(source, voi)
    radiology = xray(tmp_path / "data", tmp_path / "cache", size=list(expected.shape), voi=voi)
    image = load_only(radiology)
    assert image.shape == (1, *expected.shape)
    np.testing.assert_allclose(image[0], expected, atol=1e-4)


def test_monochrome1_is_inverted_so_higher_is_brighter() -> None:
    """On the real CR: the stored maximum (darkest in MONOCHROME1) becomes the output minimum."""
    source = Path(get_testdata_file("6154"))
    assert pydicom.dcmread(source).PhotometricInterpretation == "MONOCHROME1"
    stored = pydicom.dcmread(source).pixel_array
    image = expected_image(source, voi=False)
    assert image[np.unravel_index(stored.argmax(), stored.shape)] == 0.0
    assert image[np.unravel_index(stored.argmin(), stored.shape)] == 1.0


def test_one_radiograph_as_monochrome1_monochrome2_and_png_loads_the_same(tmp_path: Path) -> None:
    image = chest_radiograph(np.random.default_rng(3), size=48)
    root = tmp_path / "data"
    root.mkdir()
    write_dicom_radiograph(root / "a_mono2.dcm", image, "MONOCHROME2", "a")
    write_dicom_radiograph(root / "b_mono1.dcm", image, "MONOCHROME1", "b")
    write_png(root / "c_16bit.png", image, 16)

    mono1 = pydicom.dcmread(root / "b_mono1.dcm")
    assert (mono1.Modality, mono1.PhotometricInterpretation) == ("CR", "MONOCHROME1")
    assert mono1.SOPClassUID.name == "Computed Radiography Image Storage"
    assert mono1.PresentationLUTShape == "INVERSE" and mono1.BitsStored == 12
    np.testing.assert_array_equal(mono1.pixel_array, WHITE - image)
    mono2 = pydicom.dcmread(root / "a_mono2.dcm")
    assert (mono2.Modality, mono2.PhotometricInterpretation) == ("DX", "MONOCHROME2")
    np.testing.assert_array_equal(mono2.pixel_array, image)

    radiology = xray(root, tmp_path / "cache", size=[48, 48])
    a, b, c = (radiology.load(ref).data[0].numpy() for ref in radiology.index())
    np.testing.assert_allclose(a, linear_window(image.astype(float), *WINDOW), atol=1e-5)
    np.testing.assert_allclose(b, a, atol=1e-5)
    np.testing.assert_allclose(c, percentile_scale(image.astype(float)), atol=1e-3)
    without_voi = xray(root, tmp_path / "cache", size=[48, 48], voi=False)
    for ref in without_voi.index()[:2]:
        np.testing.assert_allclose(without_voi.load(ref).data[0].numpy(), c, atol=1e-3)


def test_png_8_bit_is_percentile_scaled_and_16_bit_is_fitted_with_padding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (24, 24)).astype(np.uint8)
    (tmp_path / "a").mkdir()
    Image.fromarray(grey).save(tmp_path / "a" / "grey.png")
    image = load_only(xray(tmp_path / "a", tmp_path / "cache", size=[24, 24]))
    np.testing.assert_allclose(image[0], percentile_scale(grey.astype(float)), atol=1e-5)

    ramp = np.repeat(np.linspace(0, 60000, 40)[:, None], 20, axis=1).astype(np.uint16)  # 40 x 20
    (tmp_path / "b").mkdir()
    Image.fromarray(ramp).save(tmp_path / "b" / "ramp.png")
    assert Image.open(tmp_path / "b" / "ramp.png").mode.startswith("I")
    image = load_only(xray(tmp_path / "b", tmp_path / "cache", size=[32, 32]))[0]
    # 40 x 20 scaled by 0.8 to 32 x 16, centred: 8 black columns on each side.
    assert (image[:, :8] == 0).all() and (image[:, 24:] == 0).all()
    middle = image[:, 8:24]
    np.testing.assert_allclose(middle, np.repeat(middle[:, :1], 16, axis=1), atol=1e-4)
    assert (np.diff(middle[:, 0]) >= 0).all() and middle[0, 0] < 0.05 and middle[-1, 0] > 0.95


def test_bad_inputs_are_reported_by_name_and_reason(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_radiographs(root, count=2)
    for name in ("rtstruct.dcm", "reportsi.dcm", "examples_ybr_color.dcm", "SC_rgb_rle.dcm"):
        shutil.copy(get_testdata_file(name), root / name)
    shutil.copy(Path(data_path) / "anatomical.nii", root / "anatomical.nii")
    png = (root / "chest_0_dx.dcm").with_name("cut.png")
    write_png(png, chest_radiograph(np.random.default_rng(0), size=48), 8)
    png.write_bytes(png.read_bytes()[:-40])
    (root / "header_only.dcm").write_bytes(
        Path(get_testdata_file("CT_small.dcm")).read_bytes()[:200]
    )
    Image.new("RGB", (8, 8)).save(root / "colour.png")
    (root / "notes.txt").write_text("not an image")  # ignored, not reported

    radiology = xray(root, tmp_path / "cache")
    refs = radiology.index()
    assert [Path(r.path).name for r in refs] == ["chest_0_dx.dcm", "chest_1_cr.dcm"]
    reasons = dict(message.split(": ", 1) for message in radiology.bad_inputs)
    assert "not an image (Modality RTSTRUCT" in reasons[str(root / "rtstruct.dcm")]
    assert "not an image (Modality SR" in reasons[str(root / "reportsi.dcm")]
    assert "30 frames" in reasons[str(root / "examples_ybr_color.dcm")]
    assert "a RGB image where a greyscale" in reasons[str(root / "SC_rgb_rle.dcm")]
    assert "NIfTI volume where a 2D radiograph" in reasons[str(root / "anatomical.nii")]
    assert "truncated PNG" in reasons[str(png)]
    assert "truncated DICOM file" in reasons[str(root / "header_only.dcm")]
    assert "a RGB PNG where a greyscale" in reasons[str(root / "colour.png")]
    assert len(reasons) == 8


def test_truncated_pixel_data_fails_at_load_naming_the_file(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_radiographs(root, count=1)
    path = root / "chest_0_dx.dcm"
    path.write_bytes(path.read_bytes()[:-1000])  # header intact, pixel data cut short
    radiology = xray(root, tmp_path / "cache")
    (ref,) = radiology.index()
    with pytest.raises(BadSample) as failure:
        radiology.load(ref)
    assert failure.value.path == str(path) and "cannot decode DICOM pixels" in failure.value.reason


def test_the_embedded_sample_is_cached_image2d(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    radiology = xray(None, tmp_path / "cache")
    assert (radiology.modality, radiology.sample_size, radiology.channels) == (
        "image2d",
        (64, 64),
        1,
    )
    refs = radiology.index()
    assert radiology.resolve_root() == tmp_path / "cache" / "sample-data" / "radiology-xray"
    assert sorted(Path(r.path).suffix for r in refs) == [".dcm"] * 4 + [".png"] * 4
    first = [radiology.load(ref).data for ref in refs]
    assert all(d.shape == (1, 64, 64) and d.min() >= 0 and d.max() <= 1 for d in first)

    def fail(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(Radiology, "_decode_radiograph", staticmethod(fail))
    again = xray(None, tmp_path / "cache")
    for ref, data in zip(again.index(), first, strict=True):
        assert bool((again.load(ref).data == data).all())


def test_the_mode_decides_modality_and_the_shape_of_data_size(tmp_path: Path) -> None:
    ct = xray(None, tmp_path, mode="ct")
    assert (ct.modality, ct.sample_size) == ("volume3d", (32, 32, 32))
    with pytest.raises(ConfigError, match=r"data.size must be \(H, W\) for data.mode=xray"):
        xray(None, tmp_path, size=[32, 32, 32]).index()
    with pytest.raises(ConfigError, match=r"data.size must be \(D, H, W\) for data.mode=ct"):
        xray(None, tmp_path, mode="ct", size=[64, 64]).index()
