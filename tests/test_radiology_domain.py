"""The radiology domain on real files shipped in pydicom and nibabel, and on its own sample.

Expected values are computed here from the headers with numpy, independently of the domain's
MONAI pipeline: orientation from the affine / DICOM direction cosines, intensities from the
rescale tags and the window or percentiles, shapes from the spacing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("monai", reason="needs the radiology extra: pip install -e '.[radiology]'")
pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

import nibabel as nib
import pydicom
from nibabel.testing import data_path
from omegaconf import OmegaConf
from pydicom.data import get_testdata_file

from fmcore.crops import crop_or_pad
from fmcore.domains.radiology.data import Radiology
from fmcore.domains.radiology.dicom import read_header
from fmcore.domains.radiology.geometry import order_and_check
from fmcore.domains.radiology.sample_data import write_sample
from fmcore.errors import BadSample, ConfigError

CONFIG = Path(__file__).parents[1] / "configs" / "domain" / "radiology.yaml"
ANATOMICAL = Path(data_path) / "anatomical.nii"


def domain(root: Path | None, cache: Path, **data: object) -> Radiology:
    settings = OmegaConf.load(CONFIG).data
    settings.root = None if root is None else str(root)
    settings.merge_with(data)
    return Radiology(settings, cache)


def window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((values - low) / (high - low), 0, 1)


def test_ct_small_is_windowed_hu_in_ras_order(tmp_path: Path) -> None:
    source = Path(get_testdata_file("CT_small.dcm"))
    (tmp_path / "ct").mkdir()
    shutil.copy(source, tmp_path / "ct" / "CT_small.dcm")
    radiology = domain(tmp_path / "ct", tmp_path / "cache", spacing=None, foreground=None)
    (ref,) = radiology.index()[:1]
    (volume,) = np.asarray(radiology.volume(ref))

    ds = pydicom.dcmread(source)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # Rows run posterior and columns run left in LPS (direction cosines 1,0,0 / 0,1,0): both
    # are reversed to run right and anterior, and the (row, column) plane becomes (R, A).
    assert list(ds.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
    expected = window(hu, -1000, 1000).T[::-1, ::-1]
    assert volume.shape == (128, 128, 1)
    np.testing.assert_allclose(volume[..., 0], expected, atol=1e-5)
    assert volume.min() >= 0.0 and volume.max() <= 1.0


def test_dicom_geometry_gives_the_ras_affine_of_the_tags() -> None:
    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    _, affine = order_and_check([read_header(path).geometry])
    row_mm, column_mm = (float(v) for v in ds.PixelSpacing)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    expected = np.array(
        [
            [-column_mm, 0, 0, -x],
            [0, -row_mm, 0, -y],
            [0, 0, float(ds.SliceThickness), z],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(affine, expected, atol=1e-6)


def test_ct_small_is_resampled_to_the_configured_spacing(tmp_path: Path) -> None:
    (tmp_path / "ct").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct" / "a.dcm")
    radiology = domain(
        tmp_path / "ct", tmp_path / "cache", spacing=[1.5, 1.5, 5.0], foreground=None
    )
    (volume,) = np.asarray(radiology.volume(radiology.index()[0]))
    extent = (128 - 1) * 0.661468 / 1.5 + 1  # voxel centres spanning the same millimetres
    assert volume.shape[2] == 1
    assert all(abs(n - extent) <= 1 for n in volume.shape[:2])


def test_mr_small_is_percentile_scaled(tmp_path: Path) -> None:
    source = Path(get_testdata_file("MR_small.dcm"))
    (tmp_path / "mr").mkdir()
    shutil.copy(source, tmp_path / "mr" / "MR_small.dcm")
    radiology = domain(
        tmp_path / "mr", tmp_path / "cache", mode="mri", spacing=None, foreground=None
    )
    (volume,) = np.asarray(radiology.volume(radiology.index()[0]))
    raw = pydicom.dcmread(source).pixel_array.astype(np.float64)
    low, high = np.percentile(raw, [1, 99])
    np.testing.assert_allclose(volume[..., 0], window(raw, low, high).T[::-1, ::-1], atol=1e-4)


def test_anatomical_nifti_is_flipped_from_las_to_ras_and_resampled(tmp_path: Path) -> None:
    image = nib.load(ANATOMICAL)
    assert nib.aff2axcodes(image.affine) == ("L", "A", "S")
    raw = np.asarray(image.dataobj, dtype=np.float64)
    native = domain(ANATOMICAL, tmp_path / "c1", mode="mri", spacing=None, foreground=None)
    (volume,) = np.asarray(native.volume(native.index()[0]))
    low, high = np.percentile(raw, [1, 99])
    np.testing.assert_allclose(volume, window(raw, low, high)[::-1], atol=1e-4)

    coarse = domain(ANATOMICAL, tmp_path / "c2", mode="mri", spacing=[4, 4, 4], foreground=None)
    (volume,) = np.asarray(coarse.volume(coarse.index()[0]))
    zooms = image.header.get_zooms()[:3]
    expected = [(n - 1) * z / 4 + 1 for n, z in zip(raw.shape, zooms, strict=True)]
    assert all(abs(n - e) <= 1 for n, e in zip(volume.shape, expected, strict=True))
    assert volume.min() >= 0.0 and volume.max() <= 1.0


def test_the_sample_dicom_series_is_ordered_by_position_and_matches_its_nifti(
    tmp_path: Path,
) -> None:
    write_sample(tmp_path / "sample", volumes=1)
    rng = np.random.default_rng(0)
    series = sorted((tmp_path / "sample" / "phantom_0_dicom").glob("*.dcm"))
    names = rng.permutation(len(series))
    for path, number in zip(series, names, strict=True):  # file names no longer follow position
        path.rename(path.with_name(f"im{number:03d}.tmp"))
    for path in (tmp_path / "sample" / "phantom_0_dicom").glob("*.tmp"):
        path.rename(path.with_suffix(".dcm"))

    radiology = domain(tmp_path / "sample", tmp_path / "cache", crops_per_volume=1)
    refs = radiology.index()
    assert [r.kind for r in refs] == ["nifti", "dicom"] and radiology.bad_inputs == []
    heights = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in refs[1].paths]
    assert heights == sorted(heights) and len(heights) == 48
    np.testing.assert_array_equal(radiology.volume(refs[0]), radiology.volume(refs[1]))

    hu = np.asarray(nib.load(refs[0].paths[0]).dataobj, dtype=np.float64)
    assert hu.min() == -1000 and 600 < hu.max() < 900  # air, water, lungs, bone
    assert nib.load(refs[0].paths[0]).header.get_zooms() == (1.5, 1.5, 1.5)
    sample = radiology.load(refs[0])
    assert sample.data.shape == (1, 32, 32, 32) and sample.data.dtype.is_floating_point
    assert float(sample.data.min()) >= 0.0 and float(sample.data.max()) <= 1.0


def test_bad_inputs_are_reported_by_name_and_reason(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_sample(root, volumes=1)
    shutil.copy(get_testdata_file("rtstruct.dcm"), root / "rtstruct.dcm")
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (root / "truncated").mkdir()
    (root / "truncated" / "ct.dcm").write_bytes(ct[:200])
    (root / "truncated" / "cut.dcm").write_bytes(ct[:1000])  # inside the data set
    (root / "notes.txt").write_text("not an image")  # ignored, not reported
    gap = root / "phantom_0_dicom" / "slice_020.dcm"
    gap.unlink()  # a missing slice: the series is no longer one regular grid

    radiology = domain(root, tmp_path / "cache", crops_per_volume=1)
    refs = radiology.index()
    assert [r.kind for r in refs] == ["nifti"]
    reasons = dict(message.split(": ", 1) for message in radiology.bad_inputs)
    assert "not an image (Modality RTSTRUCT" in reasons[str(root / "rtstruct.dcm")]
    assert "truncated DICOM file" in reasons[str(root / "truncated" / "ct.dcm")]
    (series,) = [k for k in reasons if k.startswith(str(root / "phantom_0_dicom"))]
    assert "uneven slice spacing" in reasons[series]
    assert "truncated CT Image Storage header" in reasons[str(root / "truncated" / "cut.dcm")]
    assert len(reasons) == 4


def test_truncated_volumes_fail_at_load_naming_the_file(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_sample(root, volumes=1)
    nifti = root / "phantom_0.nii.gz"
    nifti.write_bytes(nifti.read_bytes()[:2000])
    pixels = root / "phantom_0_dicom" / "slice_010.dcm"
    pixels.write_bytes(pixels.read_bytes()[:-1000])  # header intact, pixel data cut short
    radiology = domain(root, tmp_path / "cache", crops_per_volume=1)
    refs = radiology.index()
    for ref, culprit in zip(refs, (nifti, pixels), strict=True):
        with pytest.raises(BadSample) as failure:
            radiology.load(ref)
        assert failure.value.path == str(culprit)


def test_volumes_are_decoded_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    radiology = domain(None, tmp_path / "cache", crops_per_volume=2)
    refs = radiology.index()
    first = [radiology.load(ref).data for ref in refs]
    assert len(list((tmp_path / "cache" / "radiology" / "volumes").glob("*.npy"))) == 3

    def fail(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(Radiology, "_decode", staticmethod(fail))
    again = domain(None, tmp_path / "cache", crops_per_volume=2)
    assert again.index() == refs  # same seeded crop positions
    for ref, data in zip(refs, first, strict=True):
        assert bool((again.load(ref).data == data).all())
    # A different window is a different cache entry.
    other = domain(None, tmp_path / "cache", crops_per_volume=2, windows=[[-160, 240]])
    with pytest.raises(AssertionError, match="decoded again"):
        other.load(refs[0])


def test_crop_or_pad_is_deterministic_and_pads_short_axes() -> None:
    volume = np.arange(5 * 10 * 3, dtype=np.float32).reshape(5, 10, 3)
    out = crop_or_pad(volume, (4, 4, 4), (1.0, 0.5, 0.0))
    assert out.shape == (4, 4, 4)
    np.testing.assert_array_equal(out[:, :, 0:3], volume[1:5, 3:7, :])
    assert (out[:, :, 3] == 0).all()


def test_unknown_mode_fails_with_the_valid_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid: ct, mri, xray"):
        domain(None, tmp_path / "cache", mode="pet").index()


def test_ct_windows_are_channels_by_formula(tmp_path: Path) -> None:
    hu = np.linspace(-1500, 1500, 8 * 8 * 16, dtype=np.float32).reshape(8, 8, 16)
    path = tmp_path / "ramp.nii"
    nib.save(nib.Nifti1Image(hu, np.eye(4)), path)  # already RAS at 1 mm
    windows = [[-160, 240], [-1350, 150], [-1000, 1000]]
    radiology = domain(
        path, tmp_path / "cache", spacing=None, foreground=None, windows=windows, size=[8, 8, 8]
    )
    (ref,) = radiology.index()[:1]
    volume = np.asarray(radiology.volume(ref))
    assert radiology.channels == 3 and volume.shape == (3, 8, 8, 16)
    for channel, (low, high) in zip(volume, windows, strict=True):
        np.testing.assert_allclose(channel, window(hu, low, high), atol=1e-6)
    sample = radiology.load(ref).data  # (C, D, H, W) = (C, S, A, R)
    assert sample.shape == (3, 8, 8, 8)
    start = round(ref.crop[0] * 8)  # the crop's first slice along S
    expected = window(hu[:, :, start : start + 8], -1350, 150).transpose(2, 1, 0)
    np.testing.assert_allclose(sample[1].numpy(), expected, atol=1e-6)


def test_the_encoder_takes_one_input_channel_per_window(tmp_path: Path) -> None:
    from fmcore.config import compose, config_sources
    from fmcore.factory import build_domain, build_encoder
    from fmcore.plugin_manager import registry

    words = [
        "domain=radiology",
        "encoder.depth=1",
        "encoder.embed_dim=32",
        "encoder.vit.num_heads=2",
    ]
    config = compose(
        [*words, "data.windows=[[-160,240],[-1350,150]]", f"run.cache_dir={tmp_path}"],
        config_sources(registry()),
    )
    radiology = build_domain(config, registry())
    encoder = build_encoder(config, registry(), radiology)
    assert radiology.channels == 2
    out = encoder(torch.rand(1, 2, 32, 32, 32))
    assert out.patches.shape == (1, 64, 32)  # 32^3 voxels, 8^3 patches


@pytest.mark.parametrize("windows", [[], [[240, -160]], [[1, 2, 3]]])
def test_malformed_windows_fail_naming_the_key(tmp_path: Path, windows: list) -> None:
    with pytest.raises(ConfigError, match=r"data\.windows must list"):
        domain(None, tmp_path / "cache", windows=windows).index()
