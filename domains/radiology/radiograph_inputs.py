"""Finding radiographs under a root: single-frame greyscale DICOM files and PNG files.

Inputs that are not one greyscale 2D image (RTSTRUCT, SR, cine loops, colour images, NIfTI
volumes, truncated PNGs) are returned as ``(path, reason)`` problems for ``report_bad_input``.
"""

from __future__ import annotations

from pathlib import Path

from fmcore.domains.radiology.inputs import input_files, may_be_dicom
from fmcore.domains.radiology.nifti import is_nifti
from fmcore.domains.radiology.radiograph_dicom import check_dicom_radiograph
from fmcore.domains.radiology.radiograph_png import check_png
from fmcore.domains.radiology.refs import RadiographRef


def find_radiographs(root: Path) -> tuple[list[RadiographRef], list[tuple[str, str]]]:
    """Every radiograph under ``root`` (a file or a folder searched recursively), by path."""
    radiographs: list[RadiographRef] = []
    problems: list[tuple[str, str]] = []
    for path in input_files(root):
        if is_nifti(path):
            problems.append((str(path), "a NIfTI volume where a 2D radiograph is expected"))
            continue
        if path.suffix.lower() == ".png":
            kind, check = "png", check_png
        elif may_be_dicom(path):
            kind, check = "dicom", check_dicom_radiograph
        else:
            continue
        try:
            check(path)
        except ValueError as error:  # NotAnImage, or a PNG that is not a greyscale radiograph
            problems.append((str(path), str(error)))
            continue
        except Exception as error:  # unreadable header
            problems.append((str(path), f"cannot read {kind}: {type(error).__name__}: {error}"))
            continue
        radiographs.append(RadiographRef(kind, str(path)))
    return radiographs, problems
