"""The labelled embedded samples (``data.sample=labelled``): real files of two classes whose
``labels.csv`` ``data.labels`` defaults to, balanced splits, and the class signal in the files."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from fmcore.errors import ConfigError
from fmcore.labels import load_labels, sample_patients

CONFIGS = Path(__file__).parents[1] / "configs" / "domain"


def domain_data(name: str, **data: object):
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
    assert load_labels(root / "labels.csv").source == root / "labels.csv"

    # The class is in the files: effusion fills part of the lungs, so less of the body is air.
    def air_in_body(path: Path) -> float:
        hu = ndimage.median_filter(np.asarray(nib.load(path).dataobj, np.float32), size=3)
        body = np.stack(
            [ndimage.binary_fill_holes(plane) for plane in np.moveaxis(hu > -500, 2, 0)]
        )
        return float((body & (np.moveaxis(hu, 2, 0) < -500)).sum() / body.sum())

    fractions = {label: [] for label in names}
    for row in rows:
        fractions[row["label"]].append(air_in_body(root / row["path"]))
    clear, effusion = (np.mean(fractions[label]) for label in names)
    assert effusion < 0.8 * clear, (clear, effusion)


def test_a_domain_without_a_labelled_sample_says_which_it_ships(tmp_path: Path) -> None:
    from fmcore.domains.digits.data import Digits

    domain = Digits(domain_data("digits"), tmp_path)
    with pytest.raises(
        ConfigError, match=r"data.sample=labelled: domain=digits ships data.sample=plain"
    ):
        domain.sample_name  # noqa: B018


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
