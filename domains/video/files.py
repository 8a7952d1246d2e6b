"""What ``data.root`` names: one video file, or a folder searched recursively for them."""

from __future__ import annotations

from pathlib import Path

from fmcore.file_checks import DICOM_EXTENSIONS, files_under, is_dicom

CONTAINER_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov")
VIDEO_EXTENSIONS = CONTAINER_EXTENSIONS + DICOM_EXTENSIONS


def find_videos(root: Path) -> list[Path]:
    """The video files below ``root`` (hidden files and folders skipped), in sorted path order;
    ``root`` itself when it is one file."""
    if root.is_file():
        return [root]
    return [
        path
        for path in files_under(root)
        if path.suffix.lower() in VIDEO_EXTENSIONS or (not path.suffix and is_dicom(path))
    ]
