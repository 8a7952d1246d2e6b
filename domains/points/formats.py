"""Which point-cloud and mesh files the domain reads, and the checks made before open3d decodes
one: is the content what the extension says, and is a PLY file whole.

open3d reads a truncated PLY or PTS file without an error (the points past the cut come back as
garbage), so the PLY header is parsed here and the file's size (binary) or line count (ascii)
checked against what the header announces, and a PTS file's lines against its count line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLOUD_SUFFIXES = (".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts")
MESH_SUFFIXES = (".obj", ".stl", ".off")  # a .ply is a mesh when its header has faces
ARRAY_SUFFIXES = (".npy", ".npz")
SUFFIXES = CLOUD_SUFFIXES + MESH_SUFFIXES + ARRAY_SUFFIXES

PLY_TYPE_BYTES = {
    **dict.fromkeys(("char", "uchar", "int8", "uint8"), 1),
    **dict.fromkeys(("short", "ushort", "int16", "uint16"), 2),
    **dict.fromkeys(("int", "uint", "int32", "uint32", "float", "float32"), 4),
    **dict.fromkeys(("double", "float64"), 8),
}
FACE_ELEMENTS = ("face", "tristrips")
HEADER_LIMIT = 1 << 16  # bytes: a PLY header longer than this is not one


class UnusableCloud(ValueError):
    """A file the points domain cannot use, with the reason."""


@dataclass(frozen=True)
class PlyElement:
    name: str
    count: int
    row_bytes: int  # bytes of the fixed-size properties of one row
    list_count_bytes: int  # bytes of the length fields of its list properties (0: none)


@dataclass(frozen=True)
class PlyHeader:
    format: str  # ascii, binary_little_endian or binary_big_endian
    elements: tuple[PlyElement, ...]
    header_bytes: int

    @property
    def faces(self) -> int:
        return sum(e.count for e in self.elements if e.name in FACE_ELEMENTS)


def is_point_file(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def sniff(head: bytes) -> str | None:
    """The format a file's first bytes prove (``.ply``, ``.pcd``, ``.off``, ``.npy``,
    ``.npz``), or None when they prove nothing (text of numbers, OBJ, STL)."""
    if head.startswith(b"ply"):
        return ".ply"
    if head.startswith(b"\x93NUMPY"):
        return ".npy"
    if head.startswith(b"PK\x03\x04"):
        return ".npz"
    first_word = head.lstrip().split(maxsplit=1)[:1]
    if first_word and first_word[0] in (b"OFF", b"NOFF", b"COFF", b"CNOFF", b"STOFF"):
        return ".off"
    if b"\nFIELDS " in head and (b"\nVERSION " in head or head.startswith(b"# .PCD")):
        return ".pcd"
    return None


def check_content(path: Path) -> None:
    """Raise :class:`UnusableCloud` for an empty file, or one whose first bytes prove another
    format than its extension says."""
    if path.stat().st_size == 0:
        raise UnusableCloud("empty file")
    with open(path, "rb") as handle:
        head = handle.read(512)
    found, suffix = sniff(head), path.suffix.lower()
    if found is not None and found != suffix:
        raise UnusableCloud(
            f"its content is a {found[1:].upper()} file but its name says {suffix}:"
            " rename it (open3d picks the reader by extension)"
        )


def read_ply_header(path: Path) -> PlyHeader:
    """The elements a PLY file announces, and where its data starts."""
    with open(path, "rb") as handle:
        raw = handle.read(HEADER_LIMIT)
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise UnusableCloud("not a PLY file: no 'ply' ... 'end_header' header")
    header_bytes = raw.index(b"\n", end) + 1 if b"\n" in raw[end:] else len(raw)
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    file_format = ""
    elements: list[list] = []  # [name, count, row bytes, list count bytes]
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "format" and len(words) > 1:
            file_format = words[1]
        elif words[0] == "element" and len(words) == 3:
            elements.append([words[1], _count(words[2], line), 0, 0])
        elif words[0] == "property" and elements:
            _add_property(elements[-1], words, line)
    if file_format not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise UnusableCloud(f"PLY format '{file_format}' is not ascii or binary")
    return PlyHeader(file_format, tuple(PlyElement(*e) for e in elements), header_bytes)


def _count(word: str, line: str) -> int:
    if not word.isdigit():
        raise UnusableCloud(f"PLY header line '{line}' has no element count")
    return int(word)


def _add_property(element: list, words: list[str], line: str) -> None:
    if words[1] == "list" and len(words) == 5 and words[2] in PLY_TYPE_BYTES:
        element[3] += PLY_TYPE_BYTES[words[2]]
    elif len(words) == 3 and words[1] in PLY_TYPE_BYTES:
        element[2] += PLY_TYPE_BYTES[words[1]]
    else:
        raise UnusableCloud(f"PLY header line '{line}' is not a property of a known type")


def ply_truncation(path: Path, header: PlyHeader) -> str | None:
    """Why a PLY file holds less data than its header announces, or None.

    Binary: its size against the announced rows (list properties counted at their length
    fields only, so a cut inside the face lists is caught by the face count read instead);
    ascii: its data lines against the announced rows.
    """
    if header.format == "ascii":
        with open(path, "rb") as handle:
            handle.seek(header.header_bytes)
            lines = sum(1 for line in handle if line.strip())
        expected = sum(e.count for e in header.elements)
        if lines < expected:
            return f"truncated PLY: {lines} data lines, the header announces {expected} rows"
        return None
    needed = header.header_bytes + sum(
        e.count * (e.row_bytes + e.list_count_bytes) for e in header.elements
    )
    size = path.stat().st_size
    if size < needed:
        return f"truncated PLY: {size} bytes, the header announces at least {needed}"
    return None


def pts_truncation(path: Path) -> str | None:
    """Why a PTS file holds fewer points than its first line announces, or None (open3d fills
    the missing rows with whatever memory held)."""
    with open(path, "rb") as handle:
        first = handle.readline().strip()
        if not first.isdigit():
            return None  # no count line: nothing announced
        lines = sum(1 for line in handle if line.strip())
    if lines < int(first):
        return f"truncated PTS: {lines} points, its first line announces {int(first)}"
    return None
