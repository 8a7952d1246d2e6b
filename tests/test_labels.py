"""Labels and splits from a CSV or a folder per class (``data.labels``), on real files."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmcore.errors import ConfigError, MissingPath
from fmcore.labels import Label, hashed_split, load_labels


def write_png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def test_a_csv_numbers_class_names_keeps_splits_and_keeps_patients_together(
    tmp_path: Path,
) -> None:
    images = {name: write_png(tmp_path / "images" / f"{name}.png") for name in "abcdef"}
    write_png(tmp_path / "images" / "slide_g" / "tile_0.png")  # a folder listed as one item
    write_png(tmp_path / "unlisted.png")
    listing = tmp_path / "labels.csv"
    listing.write_text(
        "path,label,split,patient,notes\n"
        "images/a.png,tumour,test,,kept column\n"
        f"{images['b']},normal,,,\n"  # absolute path
        "images/c.png,tumour,,patient_3\n"  # patient_3 hashes to val ...
        "images/d.png,normal,,patient_3\n"  # ... and takes d with it
        "images/e.png,normal,train,patient_1\n"  # a given split decides for the patient ...
        "images/f.png,stroma,,patient_1\n"  # ... here too
        "\n"
        "images/slide_g,stroma,val\n"
    )
    table = load_labels(listing)
    # Class names in sorted order: normal 0, stroma 1, tumour 2.
    assert table.lookup(images["a"]) == Label(2, "test")
    assert table.lookup(images["b"]) == Label(0, hashed_split("images/b.png"))
    assert table.lookup(images["c"]) == Label(2, "val", "patient_3")
    assert table.lookup(images["d"]) == Label(0, "val", "patient_3")
    assert table.lookup(images["e"]) == Label(0, "train", "patient_1")
    assert table.lookup(images["f"]) == Label(1, "train", "patient_1")
    tile = tmp_path / "images" / "slide_g" / "tile_0.png"
    assert table.lookup(tile) == Label(1, "val")  # inherited from its listed folder
    assert table.lookup(tmp_path / "unlisted.png") is None
    # other columns are kept, by lower-cased name, for a domain that reads one
    assert table.lookup(images["a"]).columns == {"notes": "kept column"}
    assert table.lookup(images["b"]).columns == {}


def test_integer_labels_stay_integers(tmp_path: Path) -> None:
    for name in ("x", "y"):
        write_png(tmp_path / f"{name}.png")
    (tmp_path / "labels.csv").write_text("label,path\n7,x.png\n2,y.png\n")
    table = load_labels(tmp_path / "labels.csv")
    assert [table.lookup(tmp_path / f"{n}.png").label for n in ("x", "y")] == [7, 2]


def test_a_folder_per_class_labels_each_item_below_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for label in ("normal", "tumour"):
        for case in range(10):
            for tile in range(2):  # a slide's tiles sit in the slide's folder
                write_png(root / label / f"slide_{case}" / f"tile_{tile}.png")
    write_png(root / "tumour" / "loose.png")  # an item that is a file
    (root / "README.txt").write_text("not a class")
    (root / ".cache").mkdir()
    table = load_labels(root)

    tiles = sorted(root.glob("*/slide_*/*.png"))
    found = {path: table.lookup(path) for path in tiles}
    assert {path.parts[-3]: label.label for path, label in found.items()} == {
        "normal": 0,
        "tumour": 1,
    }
    splits = {(p.parts[-3], p.parts[-2]): label.split for p, label in found.items()}
    # A slide's two tiles share their split (4 x 2 tiles would disagree otherwise) ...
    assert len(splits) == 20 and all(
        found[p].split == splits[(p.parts[-3], p.parts[-2])] for p in tiles
    )
    # ... which is the hash of the slide folder's path below the root.
    val = {f"{label}/{slide}" for (label, slide), split in splits.items() if split == "val"}
    assert val == {"normal/slide_3", "normal/slide_4", "tumour/slide_3", "tumour/slide_8"}
    assert table.lookup(root / "tumour" / "loose.png").label == 1
    assert table.lookup(root / "README.txt") is None


def test_class_folders_named_by_numbers_keep_their_numbers(tmp_path: Path) -> None:
    for label in ("3", "10"):
        write_png(tmp_path / label / "item.png")
    table = load_labels(tmp_path)
    assert table.lookup(tmp_path / "10" / "item.png").label == 10
    assert table.lookup(tmp_path / "3" / "item.png").label == 3


def test_the_hashed_split_is_stable_and_about_a_fifth_val() -> None:
    assert [hashed_split(f"patient_{i}") for i in (3, 4)] == ["val", "train"]
    counts = Counter(hashed_split(f"slide_{i}.svs") for i in range(4000))
    assert 0.18 < counts["val"] / 4000 < 0.22 and set(counts) == {"train", "val"}
    assert hashed_split("patient_4", val_fraction=1.0) == "val"


@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        (
            "path,label\na.png,x\ngone.png,y\n",
            MissingPath,
            r"labels\.csv:3: .*gone\.png does not exist",
        ),
        ("path,label\na.png,\n", ConfigError, r"labels\.csv:2: every row needs a path and a label"),
        (
            "path,label,split\na.png,x,holdout\n",
            ConfigError,
            r"labels\.csv:2: unknown split 'holdout'",
        ),
        (
            "path,class\na.png,x\n",
            ConfigError,
            r"labels\.csv:1: the header needs the column\(s\) label",
        ),
        (
            "path,label\na.png,x\n./a.png,y\n",
            ConfigError,
            r"labels\.csv:3: .* listed twice \(first at .*labels\.csv:2\)",
        ),
        (
            "path,label,split,patient\na.png,x,train,p\nb.png,y,val,p\n",
            ConfigError,
            r"labels\.csv:3: patient 'p' is in split 'val' here but in 'train' at .*labels\.csv:2",
        ),
        ("path,label\n", ConfigError, r"labels nothing"),
    ],
)
def test_a_bad_csv_names_the_file_and_line(
    tmp_path: Path, rows: str, error: type[Exception], message: str
) -> None:
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text(rows)
    with pytest.raises(error, match=message):
        load_labels(tmp_path / "labels.csv")


def test_a_missing_or_odd_source_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(MissingPath, match=r"data\.labels=.*nowhere\.csv does not exist"):
        load_labels(tmp_path / "nowhere.csv")
    (tmp_path / "labels.txt").write_text("path,label\n")
    with pytest.raises(ConfigError, match=r"neither a CSV nor a folder"):
        load_labels(tmp_path / "labels.txt")


# --- the pathology domain with data.labels ------------------------------------------------------


@pytest.fixture(scope="module")
def sample_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded sample slide, written by the domain's own writer."""
    pytest.importorskip("openslide", reason="needs the pathology extra")
    pytest.importorskip("imagecodecs", reason="the sample slide is JPEG-compressed")
    from fmcore.domains.pathology.sample_slide import write_sample_slides

    return write_sample_slides(tmp_path_factory.mktemp("sample"), count=1)[0]


def pathology(tmp_path: Path, *words: str):
    from fmcore.config import compose, config_sources
    from fmcore.factory import build_domain
    from fmcore.plugin_manager import registry

    config = compose(
        ["domain=pathology", "data.tile_size=112", f"run.cache_dir={tmp_path / 'cache'}", *words],
        config_sources(registry()),
    )
    return build_domain(config, registry())


def test_pathology_tiles_take_their_slides_labels_and_patients_never_cross_splits(
    tmp_path: Path, sample_slide: Path
) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    # Six slides of three patients (patient_3 hashes to val), and one slide nobody labelled.
    cases = {
        "s1": ("tumour", "patient_3"),
        "s2": ("normal", "patient_3"),
        "s3": ("tumour", "patient_4"),
        "s4": ("normal", "patient_4"),
        "s5": ("tumour", "patient_5"),
        "s6": ("normal", "patient_5"),
    }
    for name in [*cases, "unlabelled"]:
        shutil.copyfile(sample_slide, slides / f"{name}.tif")
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label,patient\n"
        + "".join(f"slides/{n}.tif,{label},{p}\n" for n, (label, p) in cases.items())
    )
    domain = pathology(tmp_path, f"data.root={slides}", f"data.labels={labels}")
    by_split = {split: domain.index(split) for split in ("train", "val")}

    expected = {name: int(label == "tumour") for name, (label, _) in cases.items()}
    patients = {}
    for split, refs in by_split.items():
        assert len(refs) > 0
        assert all(ref.label == expected[ref.slide_id] for ref in refs)
        patients[split] = {cases[ref.slide_id][1] for ref in refs}
    assert patients == {"train": {"patient_4", "patient_5"}, "val": {"patient_3"}}
    every = {ref.slide_id for ref in domain.index("all")}
    assert every == set(cases)  # the unlabelled slide is in no split
    for refs in by_split.values():
        sample = domain.load(refs[0])
        assert sample.label == expected[sample.meta["slide"]]

    # Federated sites splitting these slides by patient never share a patient.
    from fmcore.federated.partition import site_share

    every_ref = list(domain.index("all"))
    shares = [site_share(domain, every_ref, "patient", i, 2, seed=0) for i in range(2)]
    held = [{cases[ref.slide_id][1] for ref in share} for share in shares]
    assert held[0].isdisjoint(held[1]) and held[0] | held[1] == {
        "patient_3",
        "patient_4",
        "patient_5",
    }
    assert sum(len(share) for share in shares) == len(every_ref)


def test_pathology_tile_folders_per_class_keep_a_slides_tiles_in_one_split(
    tmp_path: Path,
) -> None:
    pytest.importorskip("openslide", reason="needs the pathology extra")
    root = tmp_path / "tiles"
    for label in ("normal", "tumour"):
        for case in range(5):
            for tile in range(3):
                write_png(root / label / f"slide_{case}" / f"{tile}.png", 60 * case)
    domain = pathology(tmp_path, f"data.root={root}", f"data.labels={root}")
    train, val = domain.index("train"), domain.index("val")
    assert len(train) + len(val) == 30
    assert {(r.slide_id, r.label) for r in val} == {
        ("normal/slide_3", 0),
        ("normal/slide_4", 0),
        ("tumour/slide_3", 1),
    }
    assert not {r.slide_id for r in train} & {r.slide_id for r in val}
    assert domain.load(val[0]).label == val[0].label


def test_pathology_refuses_labels_that_name_none_of_its_inputs(tmp_path: Path) -> None:
    pytest.importorskip("openslide", reason="needs the pathology extra")
    write_png(tmp_path / "tiles" / "case" / "0.png")
    write_png(tmp_path / "elsewhere.png")
    (tmp_path / "labels.csv").write_text("path,label\nelsewhere.png,x\n")
    domain = pathology(
        tmp_path, f"data.root={tmp_path / 'tiles'}", f"data.labels={tmp_path / 'labels.csv'}"
    )
    with pytest.raises(ConfigError, match=r"labels none of the 1 slides or tiles"):
        domain.index("train")
