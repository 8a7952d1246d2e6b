"""The embedded points sample: synthetic shapes written by open3d in the formats scanners and
modelling tools write.

Each shape is an everyday object of twelve classes in six look-alike pairs (table and desk,
chair and stool, lamp and globe lamp, mug and glass, dumbbell and barbell, snowman and totem)
built of open3d's primitive meshes (boxes, rods, balls, cones, rings) with its own proportions,
stretched along each axis and turned to a random heading about its up axis. Classes share parts
(legs, rods, balls), so a class shows in how parts are arranged, not in any one local patch.
An object is written either as a mesh (PLY with faces, OBJ, STL, OFF), which the domain
samples, or as a point cloud sampled from that mesh with surface noise (binary PLY with colours
and normals, PCD with intensity). The plain sample (``data.sample=plain``) holds every format
the domain reads, ascii and binary, with and without features; the labelled sample
(``data.sample=labelled``) holds ``SHAPES_PER_CLASS`` shapes of each class, split a half to
train, a quarter to validation, a quarter to test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fmcore.domains.points.readers import open3d
from fmcore.labels import SAMPLE_SEED, SAMPLE_SPLIT_CYCLE, write_sample_labels

SHAPES_PER_CLASS = 48
CLOUD_POINTS = 2048  # points of a shape written as a cloud
PROPORTION = (0.75, 1.25)  # factor of each part's size: no two objects of a class alike
STRETCH = (0.8, 1.2)  # per-axis scale factors of a whole object
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


class Parts:
    """An object built of open3d primitives placed in an upright frame (z up)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.mesh = open3d().geometry.TriangleMesh()

    def size(self, value: float) -> float:
        return value * self.rng.uniform(*PROPORTION)

    def add(self, part: Any, centre: tuple[float, float, float]) -> None:
        self.mesh += part.translate(np.asarray(centre, dtype=float) - part.get_center())

    def box(self, width: float, depth: float, height: float, centre: tuple) -> None:
        self.add(open3d().geometry.TriangleMesh.create_box(width, depth, height), centre)

    def rod(self, radius: float, length: float, centre: tuple, along: str = "z") -> None:
        rod = open3d().geometry.TriangleMesh.create_cylinder(radius, length, resolution=12)
        if along == "x":
            rod.rotate(rod.get_rotation_matrix_from_xyz((0.0, np.pi / 2, 0.0)))
        self.add(rod, centre)

    def ball(self, radius: float, centre: tuple) -> None:
        self.add(open3d().geometry.TriangleMesh.create_sphere(radius, resolution=12), centre)

    def cone(self, radius: float, height: float, centre: tuple) -> None:
        self.add(open3d().geometry.TriangleMesh.create_cone(radius, height, resolution=16), centre)

    def ring(self, radius: float, tube: float, centre: tuple) -> None:
        ring = open3d().geometry.TriangleMesh.create_torus(radius, tube, 16, 8)
        ring.rotate(ring.get_rotation_matrix_from_xyz((np.pi / 2, 0.0, 0.0)))  # in the x-z plane
        self.add(ring, centre)

    def legs(self, width: float, depth: float, height: float) -> None:
        inset, radius = 0.06, 0.035
        for x in (-1, 1):
            for y in (-1, 1):
                centre = (x * (width / 2 - inset), y * (depth / 2 - inset), height / 2)
                self.rod(radius, height, centre)


def table(parts: Parts) -> None:
    width, depth, height = parts.size(1.0), parts.size(0.8), parts.size(0.7)
    parts.box(width, depth, 0.06, (0.0, 0.0, height))
    parts.legs(width, depth, height)


def chair(parts: Parts) -> None:
    side, height, back = parts.size(0.55), parts.size(0.45), parts.size(0.55)
    parts.box(side, side, 0.06, (0.0, 0.0, height))
    parts.box(side, 0.06, back, (0.0, -side / 2, height + back / 2))
    parts.legs(side, side, height)


def lamp(parts: Parts) -> None:
    pole, shade = parts.size(1.0), parts.size(0.35)
    parts.rod(parts.size(0.3), 0.05, (0.0, 0.0, 0.025))
    parts.rod(0.03, pole, (0.0, 0.0, pole / 2))
    parts.cone(shade, parts.size(0.3), (0.0, 0.0, pole))


def mug(parts: Parts) -> None:
    radius, height, handle = parts.size(0.35), parts.size(0.8), parts.size(0.18)
    parts.rod(radius, height, (0.0, 0.0, height / 2))
    parts.ring(handle, 0.04, (radius + handle * 0.6, 0.0, height / 2))


def dumbbell(parts: Parts) -> None:
    length = parts.size(1.2)
    parts.rod(0.06, length, (0.0, 0.0, 0.0), along="x")
    for side in (-1, 1):
        parts.ball(parts.size(0.28), (side * length / 2, 0.0, 0.0))


def snowman(parts: Parts) -> None:
    bottom, middle, head = parts.size(0.4), parts.size(0.3), parts.size(0.2)
    parts.ball(bottom, (0.0, 0.0, bottom))
    parts.ball(middle, (0.0, 0.0, 2 * bottom + 0.8 * middle))
    parts.ball(head, (0.0, 0.0, 2 * bottom + 1.6 * middle + 0.8 * head))


def desk(parts: Parts) -> None:
    width, depth, height = parts.size(1.0), parts.size(0.6), parts.size(0.7)
    parts.box(width, depth, 0.06, (0.0, 0.0, height))
    drawers = parts.size(0.35)
    parts.box(drawers, depth, height, (width / 2 - drawers / 2, 0.0, height / 2))
    for y in (-1, 1):
        parts.rod(0.035, height, (-width / 2 + 0.06, y * (depth / 2 - 0.06), height / 2))


def stool(parts: Parts) -> None:
    side, height = parts.size(0.4), parts.size(0.7)
    parts.box(side, side, 0.06, (0.0, 0.0, height))
    parts.legs(side, side, height)


def globe_lamp(parts: Parts) -> None:
    pole, globe = parts.size(1.0), parts.size(0.22)
    parts.rod(parts.size(0.3), 0.05, (0.0, 0.0, 0.025))
    parts.rod(0.03, pole, (0.0, 0.0, pole / 2))
    parts.ball(globe, (0.0, 0.0, pole + globe * 0.8))


def glass(parts: Parts) -> None:
    radius, height = parts.size(0.28), parts.size(0.9)
    parts.rod(radius, height, (0.0, 0.0, height / 2))


def barbell(parts: Parts) -> None:
    length = parts.size(1.6)
    parts.rod(0.05, length, (0.0, 0.0, 0.0), along="x")
    for side in (-1, 1):
        parts.rod(parts.size(0.3), 0.08, (side * length * 0.4, 0.0, 0.0), along="x")


def totem(parts: Parts) -> None:
    bottom, middle, top = parts.size(0.6), parts.size(0.45), parts.size(0.3)
    parts.box(bottom, bottom, bottom, (0.0, 0.0, bottom / 2))
    parts.box(middle, middle, middle, (0.0, 0.0, bottom + middle / 2))
    parts.box(top, top, top, (0.0, 0.0, bottom + middle + top / 2))


BUILDERS = {
    "table": table,
    "desk": desk,
    "chair": chair,
    "stool": stool,
    "lamp": lamp,
    "globe_lamp": globe_lamp,
    "mug": mug,
    "glass": glass,
    "dumbbell": dumbbell,
    "barbell": barbell,
    "snowman": snowman,
    "totem": totem,
}
CLASSES = tuple(BUILDERS)


def posed_shape(name: str, rng: np.random.Generator) -> Any:
    """An object of class ``name`` with its own proportions, stretched along each axis and
    turned to a uniformly random heading about its up axis (objects stand upright, as in
    ModelNet)."""
    o3d = open3d()
    parts = Parts(rng)
    BUILDERS[name](parts)
    shape = parts.mesh
    angle = rng.uniform(0.0, 2 * np.pi)
    heading = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    )
    vertices = (np.asarray(shape.vertices) - shape.get_center()) * rng.uniform(*STRETCH, size=3)
    shape.vertices = o3d.utility.Vector3dVector(vertices @ heading.T)
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
