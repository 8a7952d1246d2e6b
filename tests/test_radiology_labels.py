"""data.labels for the radiology domain: NIfTI files, DICOM series folders and radiographs take
the label and split a CSV or a folder per class gives them; unlabelled inputs are left out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import fmcore

pytest.importorskip("monai", reason="needs the radiology extra: pip install -e '.[radiology]'")
pytest.importorskip("nibabel")
pytest.importorskip("pydicom")
pytest.importorskip("PIL")

from omegaconf import OmegaConf

from fmcore.domains.radiology.data import Radiology
from fmcore.domains.radiology.refs import RadiographRef, VolumeRef
from fmcore.domains.radiology.sample_data import (
    phantom,
    ras_affine,
    write_dicom_series,
    write_nifti,
)
from fmcore.domains.radiology.sample_radiographs import (
    chest_radiograph,
    write_png,
    write_radiographs,
)
from fmcore.errors import ConfigError
from fmcore.labels import hashed_split

CONFIG = Path(__file__).parents[1] / "configs" / "domain" / "radiology.yaml"
SIDE = 8  # voxels per side of the test volumes: indexing reads headers only
CROPS = 2


def radiology(root: Path, cache: Path, **data: object) -> Radiology:
    settings = OmegaConf.load(CONFIG).data
    settings.root = str(root)
    settings.crops_per_volume = CROPS
    settings.merge_with(data)
    return Radiology(settings, cache)


def write_volumes(root: Path) -> None:
    """Three NIfTI files and, in a patient's folder, one DICOM series of SIDE slices."""
    root.mkdir(parents=True)
    affine = ras_affine(SIDE)
    for number, name in enumerate(["a", "b", "c"]):
        volume = phantom(np.random.default_rng(number), SIDE)
        write_nifti(root / f"{name}.nii.gz", volume, affine)
    volume = phantom(np.random.default_rng(3), SIDE)
    write_dicom_series(root / "p1" / "series", volume, affine, "p1")


def labels_by_item(refs: list[VolumeRef]) -> dict[str, int]:
    """Each volume's label, keyed by its NIfTI file name or its series' folder name."""
    first = [Path(ref.paths[0]) for ref in refs]
    return {
        (path.name if ref.kind == "nifti" else path.parent.name): ref.label
        for ref, path in zip(refs, first, strict=True)
    }


def test_a_csv_gives_volumes_and_series_folders_their_labels_and_splits(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_volumes(root)
    csv = root / "labels.csv"
    # The series has no split cell: it takes its patient's (p1 is in train through a.nii.gz).
    # c.nii.gz is not listed: it is left out of every split.
    csv.write_text(
        "path,label,split,patient\n"
        "a.nii.gz,tumour,train,p1\n"
        "b.nii.gz,normal,val,p2\n"
        "p1/series,tumour,,p1\n"
    )
    domain = radiology(root, tmp_path / "cache", labels=str(csv))
    train, val = domain.index("train"), domain.index("val")
    assert labels_by_item(train) == {"a.nii.gz": 1, "series": 1}  # normal 0, tumour 1
    assert labels_by_item(val) == {"b.nii.gz": 0}
    assert domain.index("test") == []
    assert len(domain.index("all")) == len(train) + len(val) == 3 * CROPS
    series = [ref for ref in train if ref.kind == "dicom"]
    assert len(series) == CROPS  # one volume (its crops), not one per slice file
    assert all(len(ref.paths) == SIDE for ref in series)
    assert domain.bad_inputs == []
    # A volume's crops are the same with or without labels, whatever the split.
    unlabelled = radiology(root, tmp_path / "cache").index("train")
    assert {ref.crop for ref in unlabelled if ref.paths == series[0].paths} == {
        ref.crop for ref in series
    }
    assert {ref.label for ref in unlabelled} == {-1} and len(unlabelled) == 4 * CROPS


def test_loaded_samples_carry_their_label(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_volumes(root)
    csv = tmp_path / "labels.csv"  # paths relative to the CSV, which lies beside the data
    csv.write_text("path,label,split\ndata/b.nii.gz,7,test\ndata/p1,3,test\n")
    domain = radiology(root, tmp_path / "cache", labels=str(csv), spacing=None, foreground=None)
    refs = domain.index("test")
    assert sorted({ref.label for ref in refs}) == [3, 7]  # integer labels stay integers
    for ref in refs[::CROPS]:
        sample = domain.load(ref)
        assert sample.label == ref.label
        assert tuple(sample.data.shape[1:]) == (32, 32, 32)


def test_a_folder_per_class_labels_radiographs_split_by_hash(tmp_path: Path) -> None:
    root = tmp_path / "xray"
    classes = {f"{['pneumonia', 'normal'][n % 2]}/chest_{n}.png": n % 2 for n in range(10)}
    for number, name in enumerate(classes):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_png(root / name, chest_radiograph(np.random.default_rng(number), 16), 8)
    write_png(root / "loose.png", chest_radiograph(np.random.default_rng(10), 16), 8)  # no class
    domain = radiology(root, tmp_path / "cache", mode="xray", labels=str(root))
    found = {
        Path(ref.path).relative_to(root).as_posix(): (ref.label, split)
        for split in ("train", "val")
        for ref in domain.index(split)
    }
    # Classes are numbered in sorted order (normal 0, pneumonia 1); splits hash the path.
    expected = {name: (1 - number, hashed_split(name)) for name, number in classes.items()}
    assert found == expected
    assert {split for _, split in found.values()} == {"train", "val"}
    assert "loose.png" not in found and domain.bad_inputs == []
    ref = domain.index("all")[0]
    assert domain.load(ref).label == ref.label


def test_without_labels_there_is_only_train_unlabelled(tmp_path: Path) -> None:
    root = tmp_path / "xray"
    write_radiographs(root, count=2)
    domain = radiology(root, tmp_path / "cache", mode="xray")
    refs = domain.index("train")
    assert refs == domain.index("all")
    assert [ref.label for ref in refs] == [-1, -1]
    assert all(isinstance(ref, RadiographRef) for ref in refs)
    with pytest.raises(ConfigError, match=re.escape("split 'val' of radiology needs data.labels")):
        domain.index("val")
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        domain.index("dev")


def test_labels_naming_none_of_the_inputs_fail_naming_the_source(tmp_path: Path) -> None:
    root = tmp_path / "xray"
    write_radiographs(root, count=2)
    other = tmp_path / "other.png"
    write_png(other, chest_radiograph(np.random.default_rng(0), 16), 8)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nother.png,1\n")
    domain = radiology(root, tmp_path / "cache", mode="xray", labels=str(csv))
    with pytest.raises(
        ConfigError, match=re.escape(f"data.labels={csv} labels none of the 2 inputs")
    ):
        domain.index("train")


@pytest.mark.slow
def test_fmcore_eval_knn_on_labelled_radiographs_writes_eval_json(tmp_path: Path) -> None:
    root = tmp_path / "xray"
    write_radiographs(root, count=8)
    files = sorted(path.name for path in root.iterdir())
    rows = [
        f"{name},{'ab'[number % 2]},{'train' if number < 4 else 'val'},patient{number}"
        for number, name in enumerate(files)
    ]
    csv = root / "labels.csv"
    csv.write_text("path,label,split,patient\n" + "\n".join(rows) + "\n")
    out = tmp_path / "eval"
    result = fmcore(
        "eval",
        "checkpoint=random",
        "domain=radiology",
        "data.mode=xray",
        f"data.root={root}",
        f"data.labels={csv}",
        "eval=knn",
        "eval.bootstrap=0",
        "encoder.depth=2",
        "encoder.embed_dim=64",
        "encoder.vit.num_heads=2",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        f"run.dir={out}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert "accuracy" in result.stdout
    report = json.loads((out / "eval.json").read_text())
    assert report["protocol"] == "knn" and report["checkpoint"] == "random"
    assert report["splits"] == {"train": 4, "val": 4}
    assert report["num_classes"] == 2
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
