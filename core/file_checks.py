"""Input files under a root, and cheap checks before they are decoded: is a file DICOM, is a
PNG or JPEG whole.

Domains run them while indexing, so a truncated photograph is reported as a bad input with its
reason instead of failing a data-loader worker mid-epoch.
"""

from __future__ import annotations

from pathlib import Path

DICOM_EXTENSIONS = (".dcm", ".dicom")
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with
JPEG_END = b"\xff\xd9"  # the end-of-image marker; encoders may pad after it with zeros


def files_under(root: Path) -> list[Path]:
    """``root`` itself when it is a file, else the files below it in sorted path order, hidden
    files and folders skipped."""
    if root.is_file():
        return [root]
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts)
    ]


def is_dicom(path: str | Path) -> bool:
    """A DICOM file by its extension, or by the ``DICM`` marker after the 128-byte preamble
    (archives often store files without an extension)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    if path.suffix:
        return False
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def truncation(path: str | Path, image_format: str) -> str | None:
    """Why ``path``, a ``PNG`` or ``JPEG`` file by Pillow's format name, is incomplete (its last
    bytes are not the format's end marker), or None; other formats are not checked."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - 64))
        tail = handle.read()
    if image_format == "PNG" and not tail.endswith(PNG_END):
        return "truncated PNG: it does not end with an IEND chunk"
    if image_format == "JPEG" and not tail.rstrip(b"\x00").endswith(JPEG_END):
        return "truncated JPEG: it does not end with an end-of-image marker"
    return None
