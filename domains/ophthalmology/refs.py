"""What ``index`` returns: one photograph, or one OCT volume (or one B-scan of it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PhotoRef:
    """One photograph to load: ``reader`` ``pil``, ``tiff`` or ``dicom``; ``eye`` L, R or empty."""

    path: str
    reader: str
    image_id: str
    eye: str
    patient: str
    label: int = -1

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class OctRef:
    """One OCT volume (``bscan`` None) or one of its B-scans, read by ``reader``
    (:mod:`.oct_files`)."""

    path: str
    reader: str
    image_id: str
    eye: str
    patient: str
    label: int = -1
    bscan: int | None = None

    def __str__(self) -> str:
        return self.path if self.bscan is None else f"{self.path} B-scan {self.bscan}"
