"""What ``data.root`` names: one video file, or a folder searched recursively for them."""

from __future__ import annotations

from pathlib import Path

CONTAINER_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov")
DICOM_EXTENSIONS = (".dcm", ".dicom")
VIDEO_EXTENSIONS = CONTAINER_EXTENSIONS + DICOM_EXTENSIONS


def is_dicom(path: str | Path) -> bool:
    """A DICOM file by its extension, or by the ``DICM`` marker after the 128-byte preamble
    (ultrasound archives often store files without an extension)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    if path.suffix:
        return False
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def find_videos(root: Path) -> list[Path]:
    """The video files below ``root`` (hidden files and folders skipped), in sorted path order;
    ``root`` itself when it is one file."""
    if root.is_file():
        return [root]
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() in VIDEO_EXTENSIONS or (not path.suffix and is_dicom(path)):
            found.append(path)
    return found
