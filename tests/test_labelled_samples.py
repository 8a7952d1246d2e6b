"""The labelled embedded samples (``data.sample=labelled``): real files of two classes whose
``labels.csv`` ``data.labels`` defaults to, balanced splits, and the class signal in the files."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from fmcore.errors import ConfigError
from fmcore.labels import load_labels, sample_patients

CONFIGS = Path(__file__).parents[1] / "configs" / "domain"


def domain_data(name: str, **data: object) -> DictConfig:
    settings = OmegaConf.load(CONFIGS / f"{name}.yaml").data
    settings.merge_with({"sample": "labelled", **data})
    return settings


def test_sample_patients_alternate_classes_and_balance_every_split() -> None:
    patients = sample_patients(16, ("a", "b"))
    assert [p for p, _, _ in patients] == [f"patient_{n:02d}" for n in range(16)]
    by_split = Counter((split, label) for _, label, split in patients)
    assert by_split == {
        ("train", "a"): 4,
        ("train", "b"): 4,
        ("val", "a"): 2,
        ("val", "b"): 2,
        ("test", "a"): 2,
        ("test", "b"): 2,
    }


def test_the_labelled_ct_sample_is_read_with_its_labels_by_default(tmp_path: Path) -> None:
    pytest.importorskip("monai", reason="needs the radiology extra")
    import nibabel as nib
    from scipy import ndimage

    from fmcore.domains.radiology.data import Radiology

    domain = Radiology(domain_data("radiology", crops_per_volume=1), tmp_path / "cache")
    assert domain.sample_name == "radiology-labelled"
    val = domain.index("val")
    root = tmp_path / "cache" / "sample-data" / "radiology-labelled"
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 80 and {row["label"] for row in rows} == {"clear", "effusion"}
    wanted = sorted((row["path"], row["label"]) for row in rows if row["split"] == "val")
    names = ("clear", "effusion")  # class numbers in sorted order
    assert sorted((Path(ref.paths[0]).name, names[ref.label]) for ref in val) == wanted
    assert domain.label_table().source == root / "labels.csv"

    # The class is in the files: effusion fills the posterior part of the lungs, so less of the
    # body is air and what air is left lies further forward (higher A: axes are R, A, S).
    def lung_air(path: Path) -> tuple[float, float]:
        hu = ndimage.median_filter(np.asarray(nib.load(path).dataobj, np.float32), size=3)
        axial = np.moveaxis(hu, 2, 0)  # (S, R, A)
        body = np.stack([ndimage.binary_fill_holes(plane) for plane in axial > -500])
        air = body & (axial < -500)
        return float(air.sum() / body.sum()), float(np.nonzero(air)[2].mean() / hu.shape[1])

    measured = {label: [] for label in names}
    for row in rows:
        measured[row["label"]].append(lung_air(root / row["path"]))
    (clear_air, clear_a), (effusion_air, effusion_a) = (
        np.mean(measured[label], axis=0) for label in names
    )
    assert effusion_air < 0.8 * clear_air, (clear_air, effusion_air)
    assert effusion_a > clear_a + 0.02, (clear_a, effusion_a)


def test_labelled_samples_refuse_what_they_cannot_be(tmp_path: Path) -> None:
    pytest.importorskip("monai", reason="needs the radiology extra")
    from fmcore.domains.radiology.data import Radiology

    xray = Radiology(domain_data("radiology", mode="xray"), tmp_path)
    with pytest.raises(ConfigError, match=r"data\.sample=labelled is a CT sample"):
        xray.label_table()
    assert not (tmp_path / "sample-data").exists()  # refused before any folder is made

    # With data.root set the sample is not used, and data.labels is the user's or nothing.
    (tmp_path / "mine").mkdir()
    own = Radiology(domain_data("radiology", root=str(tmp_path / "mine")), tmp_path)
    assert own.label_table() is None
    with pytest.raises(ConfigError, match=r"data\.sample=labeled"):
        Radiology(domain_data("radiology", sample="labeled", root=str(tmp_path)), tmp_path)


def test_a_domain_without_a_labelled_sample_says_which_it_ships(tmp_path: Path) -> None:
    from fmcore.domains.digits.data import Digits

    match = r"data\.sample=labelled: domain=digits ships data\.sample=plain"
    with pytest.raises(ConfigError, match=match):
        Digits(domain_data("digits"), tmp_path)


def test_the_labelled_slides_are_real_slides_of_two_classes(tmp_path: Path) -> None:
    openslide = pytest.importorskip("openslide", reason="needs the pathology extra")
    pytest.importorskip("imagecodecs")
    from fmcore.domains.pathology.labelled_sample import write_labelled_slides
    from fmcore.eval.mil import read_slide_labels

    paths = write_labelled_slides(tmp_path, patients=4)
    assert len(paths) == 8
    slides = read_slide_labels(tmp_path / "labels.csv")  # the layout eval.labels reads
    assert [s.slide for s in slides] == [p.stem for p in paths]
    assert [s.label for s in slides] == [0, 0, 1, 1, 0, 0, 1, 1]  # normal 0, tumour 1
    assert [s.split for s in slides] == ["train"] * 8
    table = load_labels(tmp_path / "labels.csv")  # the layout data.labels reads
    assert table.lookup(paths[2]).label == 1 and table.lookup(paths[2]).patient == "patient_01"

    # Tumour nests are large nuclei: the most haematoxylin-rich tenth of a slide's tissue forms
    # larger blobs on a tumour slide than on a normal one, whatever the slide's staining.
    def largest_nuclei(path: Path) -> float:
        from scipy import ndimage

        slide = openslide.OpenSlide(str(path))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-3)
        rgb = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"), float)
        optical = -np.log((rgb + 1) / 256)
        purple = optical[..., 0] - optical[..., 2]  # red absorbed more than blue: haematoxylin
        tissue = optical.sum(axis=-1) > 0.3
        nuclei = ndimage.binary_opening(purple > np.quantile(purple[tissue], 0.9))
        blobs, _ = ndimage.label(nuclei)
        return float(np.quantile(np.bincount(blobs.ravel())[1:], 0.99))

    normal = [largest_nuclei(p) for p in paths[:2] + paths[4:6]]
    tumour = [largest_nuclei(p) for p in paths[2:4] + paths[6:]]
    assert min(tumour) > 1.3 * max(normal), (normal, tumour)


def test_the_pathology_domain_tiles_the_labelled_slides_of_a_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openslide", reason="needs the pathology extra")
    pytest.importorskip("imagecodecs")
    import fmcore.domains.pathology.data as pathology
    from fmcore.domains.pathology.labelled_sample import write_labelled_slides

    # 8 patients instead of 40: the same writer, a sample small enough for a unit test.
    monkeypatch.setattr(
        pathology, "write_labelled_slides", lambda folder: write_labelled_slides(folder, 8)
    )
    domain = pathology.Pathology(domain_data("pathology", tile_size=64, size=[64, 64]), tmp_path)
    assert domain.sample_name == "pathology-labelled"
    tiles = domain.index("val")
    root = tmp_path / "sample-data" / "pathology-labelled"
    with open(root / "labels.csv", newline="") as handle:
        val = {
            row["slide"]: row["label"] for row in csv.DictReader(handle) if row["split"] == "val"
        }
    assert len(val) == 4 and sorted(val.values()) == ["normal", "normal", "tumour", "tumour"]
    names = ("normal", "tumour")
    seen = {(Path(tiles[i].path).stem, names[tiles[i].label]) for i in range(len(tiles))}
    assert seen == set(val.items())
