"""The embedded points sample: synthetic shapes written by open3d in the formats scanners and
modelling tools write.

Each shape is one of open3d's primitive meshes (sphere, box, cylinder, cone, torus,
octahedron) stretched by a random factor along each axis and turned to a random orientation.
It is written either as a mesh (PLY with faces, OBJ, STL, OFF), which the domain samples, or
as a point cloud sampled from that mesh with surface noise (binary PLY with colours and normals,
PCD with intensity). The plain sample (``data.sample=plain``) holds every format the domain
reads, ascii and binary, with and without features; the labelled sample
(``data.sample=labelled``) holds ``SHAPES_PER_CLASS`` shapes of each class, split a half to
train, a quarter to validation, a quarter to test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fmcore.domains.points.readers import open3d
from fmcore.labels import SAMPLE_SEED, SAMPLE_SPLIT_CYCLE, write_sample_labels

CLASSES = ("sphere", "box", "cylinder", "cone", "torus", "octahedron")
SHAPES_PER_CLASS = 48
CLOUD_POINTS = 2048  # points of a shape written as a cloud
STRETCH = (0.6, 1.4)  # per-axis scale factors of a shape
NOISE = 0.01  # surface noise of a cloud, in units of the shape's size
# (writer, suffix) of a labelled shape, cycled through within each class
LABELLED_FORMATS = (
    ("mesh", ".ply"),
    ("mesh", ".obj"),
    ("mesh", ".stl"),
    ("mesh", ".off"),
    ("cloud", ".ply"),
    ("cloud", ".pcd"),
)
# the plain sample: (file name, writer, writer options)
PLAIN_FILES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("colour_normals_ascii.ply", "cloud", {"write_ascii": True}),
    ("colour_normals_binary.ply", "cloud", {}),
    ("intensity_ascii.pcd", "cloud", {"write_ascii": True}),
    ("intensity_binary.pcd", "cloud", {}),
    ("intensity_compressed.pcd", "cloud", {"compressed": True}),
    ("points.xyz", "cloud", {}),
    ("points.xyzn", "cloud", {}),
    ("points.xyzrgb", "cloud", {}),
    ("points.pts", "cloud", {}),
    ("mesh.obj", "mesh", {}),
    ("mesh.stl", "mesh", {}),
    ("mesh.off", "mesh", {}),
    ("mesh_ascii.ply", "mesh", {"write_ascii": True}),
    ("mesh_binary.ply", "mesh", {}),
    ("points.npy", "array", {}),
    ("points.npz", "array", {}),
)
PLAIN_COPIES = 3  # each plain file is written this often, each a different shape


def primitive(name: str) -> Any:
    """One of open3d's primitive meshes, centred on the origin, about unit size."""
    mesh = open3d().geometry.TriangleMesh
    makers: dict[str, Callable[[], Any]] = {
        "sphere": lambda: mesh.create_sphere(radius=0.5, resolution=12),
        "box": lambda: mesh.create_box(1.0, 1.0, 1.0),
        "cylinder": lambda: mesh.create_cylinder(radius=0.4, height=1.0, resolution=16),
        "cone": lambda: mesh.create_cone(radius=0.5, height=1.0, resolution=16),
        "torus": lambda: mesh.create_torus(torus_radius=0.5, tube_radius=0.18),
        "octahedron": lambda: mesh.create_octahedron(radius=0.6),
    }
    shape = makers[name]()
    return shape.translate(-shape.get_center())


def posed_shape(name: str, rng: np.random.Generator) -> Any:
    """The primitive stretched along each axis and turned to a uniformly random orientation."""
    o3d = open3d()
    shape = primitive(name)
    vertices = np.asarray(shape.vertices) * rng.uniform(*STRETCH, size=3)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # a random orthogonal matrix
    shape.vertices = o3d.utility.Vector3dVector(vertices @ rotation.T)
    shape.compute_triangle_normals()
    shape.compute_vertex_normals()
    return shape


def shape_cloud(shape: Any, rng: np.random.Generator) -> Any:
    """``CLOUD_POINTS`` points on the shape's surface with noise, normals, a colour by height
    and a LiDAR-like intensity, as an open3d tensor point cloud."""
    o3d = open3d()
    o3d.utility.random.seed(int(rng.integers(2**31)))
    sampled = shape.sample_points_uniformly(CLOUD_POINTS, use_triangle_normal=True)
    xyz = np.asarray(sampled.points) + rng.normal(scale=NOISE, size=(CLOUD_POINTS, 3))
    height = (xyz[:, 2] - xyz[:, 2].min()) / max(float(np.ptp(xyz[:, 2])), 1e-6)
    colours = np.stack([height, 1 - height, np.full_like(height, 0.5)], axis=1)
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(xyz.astype(np.float32)))
    cloud.point.normals = o3d.core.Tensor(np.asarray(sampled.normals, dtype=np.float32))
    cloud.point.colors = o3d.core.Tensor(colours.astype(np.float32))
    intensity = rng.uniform(0.2, 1.0, size=(CLOUD_POINTS, 1)).astype(np.float32)
    cloud.point.intensity = o3d.core.Tensor(intensity)
    return cloud


def write_shape(path: Path, writer: str, shape: Any, rng: np.random.Generator, **options) -> None:
    """Write ``shape`` to ``path`` as a ``mesh``, a ``cloud`` or a NumPy ``array``."""
    o3d = open3d()
    if writer == "mesh":
        # STL stores no vertex normals; open3d refuses to write it with them
        written = o3d.io.write_triangle_mesh(
            str(path), shape, write_vertex_normals=path.suffix != ".stl", **options
        )
    elif writer == "cloud":
        written = o3d.t.io.write_point_cloud(str(path), shape_cloud(shape, rng), **options)
    else:
        cloud = shape_cloud(shape, rng)
        xyz, normals = cloud.point.positions.numpy(), cloud.point.normals.numpy()
        if path.suffix == ".npy":
            np.save(path, np.concatenate([xyz, normals], axis=1))
        else:
            np.savez(path, points=xyz, normals=normals, colors=cloud.point.colors.numpy())
        written = True
    if not written:
        raise OSError(f"open3d could not write {path}")


def write_sample_files(directory: Path) -> list[Path]:
    """The plain sample: every file of ``PLAIN_FILES``, ``PLAIN_COPIES`` times."""
    paths = []
    for copy in range(PLAIN_COPIES):
        for number, (name, writer, options) in enumerate(PLAIN_FILES):
            rng = np.random.default_rng([SAMPLE_SEED, copy, number])
            shape = posed_shape(CLASSES[(copy + number) % len(CLASSES)], rng)
            path = directory / f"{copy}_{name}"
            write_shape(path, writer, shape, rng, **options)
            paths.append(path)
    return paths


def write_labelled_shapes(directory: Path, per_class: int = SHAPES_PER_CLASS) -> list[Path]:
    """The labelled sample's files and ``labels.csv`` (path,label,split)."""
    paths, rows = [], []
    for number in range(per_class * len(CLASSES)):
        label, index = CLASSES[number % len(CLASSES)], number // len(CLASSES)
        rng = np.random.default_rng([SAMPLE_SEED, number])
        writer, suffix = LABELLED_FORMATS[index % len(LABELLED_FORMATS)]
        path = directory / f"{label}_{index:02d}{suffix}"
        write_shape(path, writer, posed_shape(label, rng), rng)
        paths.append(path)
        rows.append((path.name, label, SAMPLE_SPLIT_CYCLE[index % len(SAMPLE_SPLIT_CYCLE)]))
    write_sample_labels(directory, ("path", "label", "split"), rows)
    return paths
