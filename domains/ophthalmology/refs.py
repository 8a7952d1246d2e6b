"""What ``index`` returns: one input of the domain's mode, and for OCT B-scans which one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EyeRef:
    """One input to load: a photograph (``reader`` ``pil``, ``tiff`` or ``dicom``), or an OCT
    volume (a reader of :mod:`.oct_files`), whole (``bscan`` None) or one of its B-scans;
    ``eye`` L, R or empty."""

    path: str
    reader: str
    image_id: str
    eye: str
    patient: str
    label: int = -1
    bscan: int | None = None

    def __str__(self) -> str:
        return self.path if self.bscan is None else f"{self.path} B-scan {self.bscan}"
