"""Decoding one file into points and their optional per-point features, through open3d.

Point clouds (PLY, PCD, XYZ, XYZN, XYZRGB, PTS) are read with open3d's tensor reader, which
keeps colours, normals and a PCD's intensity field. Meshes (OBJ, STL, OFF, and PLY with faces)
are read with open3d and sampled to points on their surface, uniformly or Poisson-disk, with
each point's normal taken from its triangle. NumPy arrays are read with NumPy (see
:func:`read_array`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmcore.domains.points.formats import (
    ARRAY_SUFFIXES,
    MESH_SUFFIXES,
    PlyHeader,
    UnusableCloud,
    check_content,
    ply_truncation,
    pts_truncation,
    read_ply_header,
)

FEATURE_WIDTHS = {"colour": 3, "normal": 3, "intensity": 1}
FEATURE_NAMES = {
    "colour": "colour",
    "color": "colour",
    "colours": "colour",
    "colors": "colour",
    "normal": "normal",
    "normals": "normal",
    "intensity": "intensity",
}
# open3d's attribute names (a .pts file's intensity comes back as "intensities")
OPEN3D_ATTRIBUTES = {
    "colors": "colour",
    "normals": "normal",
    "intensity": "intensity",
    "intensities": "intensity",
}
ARRAY_KEYS = {"points": "xyz", "xyz": "xyz", **OPEN3D_ATTRIBUTES, "colours": "colour"}
MESH_SAMPLINGS = ("uniform", "poisson")


@dataclass
class Cloud:
    """Points (M, 3) and features by name (each (M, width)), all float32."""

    xyz: np.ndarray
    features: dict[str, np.ndarray]


@dataclass(frozen=True)
class MeshSampling:
    """How a mesh becomes points: ``points`` on its surface, ``uniform`` or ``poisson``."""

    method: str
    points: int


@functools.cache
def open3d() -> Any:
    """open3d, with its own warnings silenced: the domain reports what went wrong itself."""
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d


def feature_name(name: str) -> str:
    try:
        return FEATURE_NAMES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown point feature '{name}': choose from {', '.join(FEATURE_WIDTHS)}"
        ) from None


def kind_of(path: Path, header: PlyHeader | None) -> str:
    """``mesh``, ``cloud`` or ``array``, by extension and, for PLY, by its header's faces."""
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return "array"
    if suffix in MESH_SUFFIXES:
        return "mesh"
    if header is not None and header.faces > 0:
        return "mesh"
    return "cloud"


def probe(path: Path) -> dict[str, Any]:
    """What the index keeps of a file: its kind, usable point count (finite points of a cloud,
    vertices of a mesh), triangles, which features it has, and an array's unnamed extra
    ``columns``."""
    check_content(path)
    header = read_ply_header(path) if path.suffix.lower() == ".ply" else None
    reason = None
    if header is not None:
        reason = ply_truncation(path, header)
    elif path.suffix.lower() == ".pts":
        reason = pts_truncation(path)  # open3d fills a cut PTS file's rows with stale memory
    if reason:
        raise UnusableCloud(reason)
    kind = kind_of(path, header)
    if kind == "mesh":
        mesh = read_mesh(path)
        if header is not None and len(mesh.triangles) < header.faces:
            # a PLY cut inside its face lists passes the size check and reads with fewer
            raise UnusableCloud(
                f"truncated PLY: {len(mesh.triangles)} triangles read, {header.faces} faces"
                " announced"
            )
        features = ["normal"] + (["colour"] if mesh.has_vertex_colors() else [])
        return {
            "kind": kind,
            "points": len(mesh.vertices),
            "triangles": len(mesh.triangles),
            "features": features,
        }
    cloud = read_array(path) if kind == "array" else read_cloud(path)
    # finite in every column: what preparation keeps for any choice of features, or more
    finite = int(np.isfinite(np.concatenate([cloud.xyz, *cloud.features.values()], 1)).all(1).sum())
    if finite == 0:
        raise UnusableCloud(
            f"no finite points: all {len(cloud.xyz)} points hold NaN or inf"
            if len(cloud.xyz)
            else "no points could be read from it"
        )
    columns = cloud.features.pop("columns", None)
    return {
        "kind": kind,
        "points": finite,
        "features": sorted(cloud.features),
        "columns": 0 if columns is None else columns.shape[1],
    }


def read(path: Path, kind: str, sampling: MeshSampling, seed: int) -> Cloud:
    """The points of ``path`` (of ``kind``, as probed); a mesh is sampled with ``seed``."""
    if kind == "mesh":
        return sample_mesh(read_mesh(path), sampling, seed)
    return read_array(path) if kind == "array" else read_cloud(path)


def read_cloud(path: Path) -> Cloud:
    cloud = open3d().t.io.read_point_cloud(str(path))
    if "positions" not in cloud.point:
        raise UnusableCloud("no points could be read from it (open3d cannot parse it)")
    xyz = _as_float(cloud.point.positions.numpy(), "xyz")
    features = {}
    for attribute, name in OPEN3D_ATTRIBUTES.items():
        if attribute in cloud.point:
            features[name] = _feature(cloud.point[attribute].numpy(), name, len(xyz))
    return Cloud(xyz, features)


def read_mesh(path: Path) -> Any:
    """An open3d TriangleMesh with at least one triangle, each naming vertices it has, and a
    surface to sample."""
    mesh = open3d().io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        raise UnusableCloud(
            "a mesh with no faces" if len(mesh.vertices) else "no mesh could be read from it"
        )
    if int(np.asarray(mesh.triangles).max()) >= len(mesh.vertices):
        raise UnusableCloud(f"a face names a vertex beyond its {len(mesh.vertices)} vertices")
    if not mesh.get_surface_area() > 0:
        raise UnusableCloud("a mesh of zero area: no surface to sample points on")
    return mesh


def sample_mesh(mesh: Any, sampling: MeshSampling, seed: int) -> Cloud:
    """``sampling.points`` points on the mesh's surface with their triangles' normals (and the
    vertex colours interpolated, where the mesh has them)."""
    o3d = open3d()
    o3d.utility.random.seed(seed)  # open3d's generator is per process; set before each mesh
    if sampling.method == "poisson":
        cloud = mesh.sample_points_poisson_disk(sampling.points, use_triangle_normal=True)
    else:
        cloud = mesh.sample_points_uniformly(sampling.points, use_triangle_normal=True)
    features = {"normal": np.asarray(cloud.normals, dtype=np.float32)}
    if cloud.has_colors():
        features["colour"] = np.asarray(cloud.colors, dtype=np.float32)
    return Cloud(np.asarray(cloud.points, dtype=np.float32), features)


def read_array(path: Path) -> Cloud:
    """A ``.npy`` of shape (M, 3) or (M, 3 + F), its extra columns kept as the feature
    ``columns``, or a ``.npz`` of named arrays: ``points`` (or ``xyz``) and optionally
    ``colors``/``colours``, ``normals``, ``intensity``."""
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
            named = {"xyz": array[:, :3], "columns": array[:, 3:]} if _is_table(array) else {}
        else:
            with np.load(path, allow_pickle=False) as arrays:
                named = {ARRAY_KEYS[k]: arrays[k] for k in arrays.files if k in ARRAY_KEYS}
    except (OSError, ValueError) as error:
        raise UnusableCloud(f"not a readable NumPy file: {error}") from None
    if "xyz" not in named or not _is_table(named["xyz"]):
        raise UnusableCloud(
            "a point array must be (M, 3+F), or an .npz with 'points' of shape (M, 3)"
        )
    xyz = _as_float(named.pop("xyz")[:, :3], "xyz")
    columns = named.pop("columns", None)
    features = {name: _feature(value, name, len(xyz)) for name, value in named.items()}
    if columns is not None and columns.shape[1]:
        features["columns"] = _as_float(columns, "columns")
    return Cloud(xyz, features)


def _feature(values: np.ndarray, name: str, points: int) -> np.ndarray:
    """One feature as (points, width) float32; colours with alpha lose it; any other shape is
    an unusable file."""
    values = values.reshape(len(values), -1) if values.ndim else values.reshape(1, 1)
    if name == "colour" and values.ndim == 2 and values.shape[1] == 4:
        values = values[:, :3]  # RGBA
    width = FEATURE_WIDTHS[name]
    if values.shape != (points, width):
        raise UnusableCloud(
            f"its {name} has shape {values.shape}, expected ({points}, {width}) for {points} points"
        )
    return _as_float(values, name)


def _is_table(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] >= 3 and array.dtype.kind in "fiu"


def _as_float(values: np.ndarray, name: str) -> np.ndarray:
    if name in ("colour", "intensity") and values.dtype.kind in "iu":
        return values.astype(np.float32) / np.iinfo(values.dtype).max  # 8/16-bit values
    return np.ascontiguousarray(values, dtype=np.float32)
