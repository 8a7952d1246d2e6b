"""What ``data.root`` names: a folder of slides (searched recursively), one slide, a CSV listing
slides, or folders of tiles already extracted as PNG/JPEG.

A CSV may carry slide-level labels and splits for evaluation (kNN, linear probe, ABMIL)::

    path,label,split
    slides/case_001.svs,tumour,train
    /data/other/case_002.ndpi,normal,val

Only ``path`` is required (a CSV without a header is one path per line); relative paths are
relative to the CSV. Labels may be integers or class names (numbered in sorted order).

``data.labels`` (:mod:`fmcore.labels`: a CSV ``path,label[,split][,patient]`` or a folder per
class) labels any of these instead: only the inputs it labels are used, with its labels and
splits.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

from fmcore.domains.pathology.slides import SLIDE_EXTENSIONS
from fmcore.errors import ConfigError
from fmcore.labels import LabelTable, number_labels

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
PATH_COLUMNS = ("path", "slide", "slide_path", "file", "filename")
SPLITS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class Input:
    """One slide (or one pre-extracted tile) to use, with its id, label and split."""

    path: str
    slide_id: str
    label: int = -1
    split: str | None = None

    @property
    def is_image_tile(self) -> bool:
        return Path(self.path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Inputs:
    """Everything found under ``data.root``: inputs, plus listed files that do not exist."""

    items: list[Input]
    missing: list[str]
    has_splits: bool

    def select(self, split: str) -> list[Input]:
        if split == "all":
            return list(self.items)
        if not self.has_splits:
            if split == "train":
                return list(self.items)
            raise ConfigError(
                f"split '{split}' needs data.root to be a CSV with a 'split' column"
                " (path,label,split); a folder or a single slide only has 'train' and 'all'"
            )
        return [item for item in self.items if (item.split or "train") == split]

    def with_labels(self, table: LabelTable) -> Inputs:
        """The inputs ``table`` labels (``data.labels``), each with its label and split; a
        slide's tiles inherit them, so splits are by slide (by patient when it has a column)."""
        labelled = [
            replace(item, label=found.label, split=found.split)
            for item in self.items
            if (found := table.lookup(item.path)) is not None
        ]
        if self.items and not labelled:
            raise ConfigError(
                f"data.labels={table.source} labels none of the {len(self.items)} slides or tiles"
                " found under data.root: its paths must name them or folders above them"
            )
        return Inputs(labelled, self.missing, has_splits=True)


def find_inputs(root: Path) -> Inputs:
    if root.is_dir():
        return Inputs(_scan_folder(root), [], has_splits=False)
    if root.suffix.lower() == ".csv":
        return _read_csv(root)
    return Inputs([Input(str(root), root.stem)], [], has_splits=False)


def _hidden(part: str) -> bool:
    return part.startswith(".")


def _scan_folder(root: Path) -> list[Input]:
    """Slides and image tiles below ``root``, in sorted path order.

    Skipped: hidden files and folders; every .dcm file of a folder but the first (OpenSlide
    opens a DICOM slide from any one of its files); JPEGs beside a Hamamatsu .vms/.vmu, which
    are that slide's pieces, not tiles.
    """
    found: list[Input] = []
    dicom_folders: set[Path] = set()
    vms_folders = {p.parent for p in root.rglob("*") if p.suffix.lower() in (".vms", ".vmu")}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(_hidden(p) for p in relative.parts) or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix == ".dcm":
            if path.parent in dicom_folders:
                continue
            dicom_folders.add(path.parent)
            slide_id = relative.parent.as_posix() if relative.parent.parts else root.name
            found.append(Input(str(path), slide_id))
        elif suffix in SLIDE_EXTENSIONS:
            found.append(Input(str(path), relative.with_suffix("").as_posix()))
        elif suffix in IMAGE_EXTENSIONS and path.parent not in vms_folders:
            # Tiles are usually stored one folder per slide: the folder names the slide.
            slide_id = relative.parent.as_posix() if relative.parent.parts else root.name
            found.append(Input(str(path), slide_id))
    return found


def _read_csv(file: Path) -> Inputs:
    with open(file, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise ConfigError(f"data.root={file} is an empty CSV: list one slide path per line")
    header = [cell.strip().lower() for cell in rows[0]]
    if any(h in PATH_COLUMNS for h in header):
        path_column = next(i for i, h in enumerate(header) if h in PATH_COLUMNS)
        columns = {
            name: header.index(name) for name in ("label", "split", "slide_id") if name in header
        }
        rows = rows[1:]
    else:
        path_column, columns = 0, {}

    def cell(row: list[str], name: str) -> str:
        index = columns.get(name)
        return row[index].strip() if index is not None and index < len(row) else ""

    labels = number_labels([cell(row, "label") for row in rows])
    items, missing = [], []
    for row, label in zip(rows, labels, strict=True):
        path = Path(row[path_column].strip()).expanduser()
        if not path.is_absolute():
            path = file.parent / path
        if not path.exists():
            missing.append(str(path))
            continue
        slide_id = cell(row, "slide_id") or path.stem
        items.append(Input(str(path), slide_id, label, cell(row, "split").lower() or None))
    return Inputs(items, missing, has_splits="split" in columns)
