"""Finding volumes under a root: NIfTI files, and DICOM slices grouped into series.

Whole inputs that cannot be used (non-image DICOM objects, unreadable files, series whose slices
do not form one grid) are returned as ``(path, reason)`` problems for ``report_bad_input``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from fmcore.domains.radiology.dicom import DICOM_SUFFIXES, NotAnImage, SliceHeader, read_header
from fmcore.domains.radiology.geometry import InconsistentGeometry, order_and_check
from fmcore.domains.radiology.nifti import check_header, is_nifti

IGNORED_SUFFIXES = {".txt", ".json", ".csv", ".md", ".npy", ".png", ".jpg", ".xml", ".yaml"}


@dataclass(frozen=True)
class Volume:
    """One usable volume: ``kind`` "nifti" (one path) or "dicom" (slices in order)."""

    kind: str
    paths: tuple[str, ...]
    volume_id: str

    @property
    def item(self) -> Path:
        """What ``data.labels`` names for this volume: the NIfTI file or the series' folder."""
        return Path(self.paths[0]) if self.kind == "nifti" else Path(self.paths[0]).parent


def input_files(root: Path) -> list[Path]:
    """``root`` itself if it is a file, else every file below it but hidden ones, sorted."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [path for path in files if not path.name.startswith(".")]


def may_be_dicom(path: Path) -> bool:
    """DICOM suffixes, none, or numbered names (1.2.3); not other known or alphabetic ones."""
    suffix = path.suffix.lower()
    unknown_suffix = suffix not in DICOM_SUFFIXES and suffix[1:].isalpha()
    return suffix not in IGNORED_SUFFIXES and not unknown_suffix


def find_volumes(root: Path) -> tuple[list[Volume], list[tuple[str, str]]]:
    """Every volume under ``root`` (a file or a folder searched recursively), sorted by id."""
    volumes: list[Volume] = []
    problems: list[tuple[str, str]] = []
    series: dict[tuple[str, str], list[SliceHeader]] = defaultdict(list)
    for path in input_files(root):
        if is_nifti(path):
            try:
                check_header(path)
            except Exception as error:
                problems.append((str(path), f"cannot read NIfTI header: {error}"))
                continue
            volumes.append(Volume("nifti", (str(path),), str(path)))
            continue
        if not may_be_dicom(path):
            continue
        try:
            header = read_header(path)
        except NotAnImage as error:
            problems.append((str(path), str(error)))
            continue
        except Exception as error:  # truncated header, not DICOM at all
            problems.append((str(path), f"cannot read DICOM: {type(error).__name__}: {error}"))
            continue
        # A series is one SeriesInstanceUID within one folder: copies elsewhere stay apart.
        series[(str(path.parent), header.series_uid)].append(header)
    for (folder, uid), headers in series.items():
        headers.sort(key=lambda h: h.path)
        try:
            order, _ = order_and_check([h.geometry for h in headers])
        except InconsistentGeometry as error:
            problems.append((f"{folder} (series {uid})", f"inconsistent geometry: {error}"))
            continue
        paths = tuple(headers[i].path for i in order)
        volumes.append(Volume("dicom", paths, f"{folder}#{uid}"))
    volumes.sort(key=lambda v: v.volume_id)
    return volumes, problems
