"""Labels and splits for evaluation, from a folder per class or a CSV, for every domain.

``data.labels`` names one of two layouts:

- a folder with one sub-folder per class, ``<folder>/<class>/<item>``: each item (a file or a
  folder: a slide, a slide's tile folder, a DICOM series, a patient's folder) is labelled with
  its class;
- a CSV with a header, ``path,label[,split][,patient]``: ``path`` (relative to the CSV, or
  absolute) names a file or a folder. Other columns are kept as text in ``Label.columns`` for
  the domain that reads one (ophthalmology's ``eye``).

Everything below a labelled item takes its label and split, so a domain looks up each of its
inputs (a tile image, a DICOM file) with :meth:`LabelTable.lookup`. Labels stay integers when
every label is one, else class names are numbered in sorted order. Without a split (no
``split`` column, or an empty cell) an item's split comes from a stable hash of its patient, or
else of its path relative to the layout's folder: the same on every machine and run, and
independent of the other items, so adding data never moves an item to another split. A patient's
items always share one split.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fmcore.errors import ConfigError, MissingPath

SPLITS = ("train", "val", "test")
KNOWN_COLUMNS = ("path", "label", "split", "patient")
VAL_FRACTION = 0.2  # share of items (or patients) a hash sends to val when no split is given
LAYOUTS = "a CSV (path,label[,split][,patient]) or a folder with one sub-folder per class"
SAMPLE_LABELS = "labels.csv"  # a labelled embedded sample's data.labels file
SAMPLE_SEED = 20261204  # seeds every labelled embedded sample's files
SAMPLE_SPLIT_CYCLE = ("train", "train", "val", "test")  # per pair of a labelled sample's patients


def sample_patients(count: int, classes: tuple[str, str]) -> list[tuple[str, str, str]]:
    """(patient, class, split) of a two-class labelled embedded sample's ``count`` patients:
    classes alternate, and each pair of patients (one of each) goes to the next split of
    ``SAMPLE_SPLIT_CYCLE``. With ``count`` a multiple of 8 every split holds both classes
    equally: half the patients train, a quarter validate (kNN), a quarter test (MIL)."""
    return [
        (
            f"patient_{number:02d}",
            classes[number % 2],
            SAMPLE_SPLIT_CYCLE[(number // 2) % len(SAMPLE_SPLIT_CYCLE)],
        )
        for number in range(count)
    ]


@dataclass(frozen=True)
class Label:
    """The class number and split of one labelled item, its patient when the CSV names one, and
    the CSV's other columns by lower-cased name."""

    label: int
    split: str
    patient: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LabelTable:
    """Labelled items by resolved path; anything below an item shares its label and split."""

    source: Path
    items: dict[Path, Label]

    def lookup(self, path: str | Path) -> Label | None:
        """The label of ``path`` or of its nearest labelled parent folder; None if unlabelled."""
        resolved = Path(path).resolve()
        for candidate in (resolved, *resolved.parents):
            found = self.items.get(candidate)
            if found is not None:
                return found
        return None


def write_sample_labels(directory: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """A labelled embedded sample's ``labels.csv`` (``path,label,...`` rows) in ``directory``."""
    with open(directory / SAMPLE_LABELS, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])


def load_labels(source: str | Path, val_fraction: float = VAL_FRACTION) -> LabelTable:
    """Read the labels ``data.labels`` names: a CSV file or a folder per class."""
    source = Path(str(source)).expanduser()
    if not source.exists():
        raise MissingPath(f"data.labels={source} does not exist: give {LAYOUTS}")
    if source.is_dir():
        items = _read_class_folders(source, val_fraction)
    elif source.suffix.lower() == ".csv":
        items = _read_csv(source, val_fraction)
    else:
        raise ConfigError(f"data.labels={source} is neither a CSV nor a folder: give {LAYOUTS}")
    if not items:
        raise ConfigError(f"data.labels={source} labels nothing: give {LAYOUTS}")
    return LabelTable(source, items)


def number_labels(values: Sequence[str]) -> list[int]:
    """Integers stay integers; class names are numbered in sorted order; an empty value is -1."""
    present = [value for value in values if value]
    if all(_is_int(value) for value in present):
        return [int(value) if value else -1 for value in values]
    names = sorted(set(present))
    return [names.index(value) if value else -1 for value in values]


def hash_position(key: str) -> float:
    """Where ``key`` falls in [0, 1), from a hash that is the same on every run and machine
    (Python's ``hash`` is salted per process): what hashed splits compare with their shares."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hashed_split(key: str, val_fraction: float = VAL_FRACTION) -> str:
    """``val`` for about ``val_fraction`` of keys, else ``train``; stable across runs and
    machines."""
    return "val" if hash_position(key) < val_fraction else "train"


def _read_class_folders(root: Path, val_fraction: float) -> dict[Path, Label]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    members = {
        folder: sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        for folder in classes
    }
    numbers = number_labels([folder.name for folder in classes])
    return {
        item.resolve(): Label(number, hashed_split(_key(item, root), val_fraction))
        for folder, number in zip(classes, numbers, strict=True)
        for item in members[folder]
    }


@dataclass(frozen=True)
class _Row:
    where: str  # "<csv>:<line>", for messages
    path: Path
    label: str
    split: str
    patient: str
    columns: dict[str, str]


def _read_csv(file: Path, val_fraction: float) -> dict[Path, Label]:
    rows = _csv_rows(file)
    numbers = number_labels([row.label for row in rows])
    patient_splits = _patient_splits(rows, val_fraction)
    items: dict[Path, Label] = {}
    first_line: dict[Path, str] = {}
    for row, number in zip(rows, numbers, strict=True):
        resolved = row.path.resolve()
        if resolved in items:
            raise ConfigError(
                f"{row.where}: {row.path} is listed twice (first at {first_line[resolved]})"
            )
        split = (
            row.split
            or patient_splits.get(row.patient)
            or hashed_split(_key(row.path, file.parent), val_fraction)
        )
        items[resolved] = Label(number, split, row.patient or None, row.columns)
        first_line[resolved] = row.where
    return items


def _csv_rows(file: Path) -> list[_Row]:
    with open(file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [cell.strip().lower() for cell in next(reader, [])]
        missing = [name for name in ("path", "label") if name not in header]
        if missing:
            raise ConfigError(
                f"{file}:1: the header needs the column(s) {', '.join(missing)}"
                f" (path,label[,split][,patient]); found: {', '.join(header) or 'nothing'}"
            )
        column: dict[str, int] = {}
        for index, name in enumerate(header):
            if name:
                column.setdefault(name, index)
        rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            rows.append(_parse_row(file, reader.line_num, cells, column))
    return rows


def _parse_row(file: Path, line: int, cells: list[str], column: dict[str, int]) -> _Row:
    def cell(name: str) -> str:
        index = column.get(name)
        return cells[index].strip() if index is not None and index < len(cells) else ""

    where = f"{file}:{line}"
    if not cell("path") or not cell("label"):
        raise ConfigError(f"{where}: every row needs a path and a label, got {','.join(cells)!r}")
    split = cell("split").lower()
    if split and split not in SPLITS:
        raise ConfigError(f"{where}: unknown split '{split}'; valid: {', '.join(SPLITS)}, or empty")
    path = Path(cell("path")).expanduser()
    if not path.is_absolute():
        path = file.parent / path
    if not path.exists():
        raise MissingPath(f"{where}: {path} does not exist")
    others = {name: cell(name) for name in column if name not in KNOWN_COLUMNS and cell(name)}
    return _Row(where, path, cell("label"), split, cell("patient"), others)


def _patient_splits(rows: list[_Row], val_fraction: float) -> dict[str, str]:
    """Each patient's split: the one its rows give (they must agree), else its hash's."""
    given: dict[str, _Row] = {}
    for row in rows:
        if not row.patient or not row.split:
            continue
        first = given.setdefault(row.patient, row)
        if first.split != row.split:
            raise ConfigError(
                f"{row.where}: patient '{row.patient}' is in split '{row.split}' here but in"
                f" '{first.split}' at {first.where}: a patient's items must share one split"
            )
    patients = {row.patient for row in rows if row.patient}
    return {
        patient: given[patient].split if patient in given else hashed_split(patient, val_fraction)
        for patient in patients
    }


def _key(path: Path, base: Path) -> str:
    """The path relative to ``base`` when below it (the same on every machine), else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(base.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
