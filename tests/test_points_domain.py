"""The points domain on files open3d writes (PLY, PCD, XYZ family, OBJ, STL, OFF), NumPy arrays,
and the PLY meshes the pyvista wheel ships: point counts, feature channels, sampling,
normalisation, and what happens to bad files."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("open3d", reason="needs the pointcloud extra: pip install -e '.[pointcloud]'")

import open3d as o3d
from omegaconf import OmegaConf

from fmcore.config import core_config_dir
from fmcore.domains.points.data import FewPoints, PointClouds
from fmcore.domains.points.preprocess import voxel_down_sample
from fmcore.domains.points.sample_data import CLASSES, PLAIN_COPIES, PLAIN_FILES, SHAPES_PER_CLASS
from fmcore.errors import ConfigError

PYVISTA_MESHES = ("airplane.ply", "ant.ply", "nut.ply", "sphere.ply")


def points_domain(root: Path | None, cache: Path, **settings: object) -> PointClouds:
    raw = OmegaConf.load(core_config_dir() / "domain" / "points.yaml")
    raw.data.root = None if root is None else str(root)
    raw.data.points = 128
    raw.data.mesh_points = 1024
    for key, value in settings.items():
        OmegaConf.update(raw, f"data.{key}", value)
    return PointClouds(raw.data, cache)


def write_cloud(path: Path, xyz: np.ndarray, **attributes: np.ndarray) -> None:
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(xyz.astype(np.float32)))
    for name, values in attributes.items():
        cloud.point[name] = o3d.core.Tensor(values.astype(np.float32))
    assert o3d.t.io.write_point_cloud(str(path), cloud)


def sample_by_name(domain: PointClouds) -> dict[str, np.ndarray]:
    return {ref.cloud_id: domain.load(ref).data.numpy() for ref in domain.index("train")}


@pytest.fixture(scope="module")
def plain_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the plain embedded sample, written once for the module."""
    cache = tmp_path_factory.mktemp("points-cache")
    points_domain(None, cache).resolve_root()
    return cache


def test_every_format_of_the_embedded_sample_reads_into_unit_sphere_clouds(
    plain_cache: Path,
) -> None:
    domain = points_domain(None, plain_cache)
    samples = sample_by_name(domain)
    assert domain.bad_inputs == []
    assert len(samples) == len(PLAIN_FILES) * PLAIN_COPIES
    suffixes = {Path(name).suffix for name in samples}
    assert suffixes == {
        ".ply",
        ".pcd",
        ".xyz",
        ".xyzn",
        ".xyzrgb",
        ".pts",
        ".obj",
        ".stl",
        ".off",
    } | {
        ".npy",
        ".npz",
    }
    for sample in samples.values():
        assert sample.shape == (128, 3) and np.isfinite(sample).all()
        radii = np.linalg.norm(sample - sample.mean(axis=0), axis=1)
        assert radii.max() == pytest.approx(1.0, abs=1e-5)  # centred, farthest point at 1
        assert len(np.unique(sample, axis=0)) == 128  # farthest points are distinct points


def test_features_come_from_the_files_that_hold_them(plain_cache: Path) -> None:
    domain = points_domain(None, plain_cache, features=["normal", "colour"])
    samples = sample_by_name(domain)
    assert domain.channels == 9
    # colour and normals: the coloured PLY and PCD clouds and the .npz (the .npy's 3 extra
    # columns are normals only, 6 wanted); meshes have normals but no vertex colours
    assert {name.split("_", 1)[1] for name in samples} == {
        "colour_normals_ascii.ply",
        "colour_normals_binary.ply",
        "intensity_ascii.pcd",
        "intensity_binary.pcd",
        "intensity_compressed.pcd",
        "points.npz",
    }
    reasons = {Path(line.split(":")[0]).name.split("_", 1)[1]: line for line in domain.bad_inputs}
    assert (
        "it has no colour" in reasons["mesh.obj"] and "it has no normal" in reasons["points.xyzrgb"]
    )
    assert (
        "3 columns after xyz, data.features=['normal', 'colour'] needs 6" in reasons["points.npy"]
    )
    for sample in samples.values():
        assert sample.shape == (128, 9)
        assert np.linalg.norm(sample[:, 3:6], axis=1) == pytest.approx(np.ones(128), abs=1e-4)
        assert (sample[:, 6:] >= 0).all() and (sample[:, 6:] <= 1).all()


def test_features_ride_with_their_points_through_sampling_and_normalisation(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(500, 3)) * [3.0, 1.0, 0.5] + [10.0, -4.0, 2.0]
    intensity = np.arange(500, dtype=np.float32)[:, None]  # each point's own number
    (tmp_path / "data").mkdir()
    write_cloud(tmp_path / "data" / "scan.pcd", xyz, intensity=intensity)
    domain = points_domain(tmp_path / "data", tmp_path / "cache", features=["intensity"])
    (sample,) = sample_by_name(domain).values()
    numbers = sample[:, 3].round().astype(int)
    assert len(set(numbers)) == 128
    chosen = xyz[numbers].astype(np.float32)  # the written points, by the number each carries
    centred = chosen - chosen.mean(axis=0)
    expected = centred / np.sqrt((centred**2).sum(axis=1)).max()
    np.testing.assert_allclose(sample[:, :3], expected, atol=1e-5)


def farthest_points_by_hand(xyz: np.ndarray, count: int) -> set[int]:
    chosen, nearest = [0], np.full(len(xyz), np.inf)
    for _ in range(count - 1):
        nearest = np.minimum(nearest, ((xyz - xyz[chosen[-1]]) ** 2).sum(axis=1))
        chosen.append(int(nearest.argmax()))
    return set(chosen)


def test_the_sample_is_the_farthest_point_sampling_from_the_first_point(tmp_path: Path) -> None:
    xyz = np.random.default_rng(1).uniform(-1, 1, size=(400, 3)).astype(np.float32)
    np.save(tmp_path / "cloud.npy", xyz)
    (sample,) = sample_by_name(points_domain(tmp_path / "cloud.npy", tmp_path / "c")).values()
    chosen = xyz[sorted(farthest_points_by_hand(xyz, 128))]
    expected = chosen - chosen.mean(axis=0)
    expected /= np.linalg.norm(expected, axis=1).max()
    np.testing.assert_allclose(sample, expected, atol=1e-5)  # in the file's order


def test_a_mesh_is_sampled_on_its_surface_with_the_normals_of_its_faces(tmp_path: Path) -> None:
    cube = o3d.geometry.TriangleMesh.create_box(2.0, 2.0, 2.0).translate((-1.0, -1.0, -1.0))
    (tmp_path / "data").mkdir()
    assert o3d.io.write_triangle_mesh(str(tmp_path / "data" / "cube.obj"), cube)
    domain = points_domain(tmp_path / "data", tmp_path / "cache", features=["normal"])
    (sample,) = sample_by_name(domain).values()
    xyz, normals = sample[:, :3], sample[:, 3:]
    # a cube centred on the origin: every surface point has one coordinate at the face's level
    levels = np.abs(xyz).max(axis=1)
    assert levels == pytest.approx(np.full(128, levels.mean()), abs=0.03)
    # each point's normal is its face's: along the axis of its largest coordinate, outwards
    # (points within 0.05 of an edge could be on either face and are left out)
    by_size = np.sort(np.abs(xyz), axis=1)
    inside = by_size[:, 2] - by_size[:, 1] > 0.05
    face_axis = np.abs(xyz).argmax(axis=1)[inside]
    rows = np.arange(128)[inside]
    assert inside.sum() > 64
    expected = np.zeros((len(rows), 3))
    expected[np.arange(len(rows)), face_axis] = np.sign(xyz[rows, face_axis])
    np.testing.assert_allclose(normals[rows], expected, atol=1e-5)
    again = points_domain(tmp_path / "data", tmp_path / "cache", features=["normal"])
    np.testing.assert_array_equal(next(iter(sample_by_name(again).values())), sample)


@pytest.mark.skipif(importlib.util.find_spec("pyvista") is None, reason="pyvista ships the meshes")
def test_the_ply_meshes_shipped_in_the_pyvista_wheel_are_read(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("pyvista")
    examples = Path(next(iter(spec.submodule_search_locations))) / "examples"
    vertices = []
    for name in PYVISTA_MESHES:
        header = (examples / name).read_bytes().split(b"end_header")[0].decode("ascii")
        vertices.append(int(header.split("element vertex ")[1].split()[0]))
    domain = points_domain(examples, tmp_path / "cache")  # beside them: .vtk files, not read
    refs = domain.index("train")
    assert sorted(Path(ref.path).name for ref in refs) == list(PYVISTA_MESHES)
    assert {ref.kind for ref in refs} == {"mesh"} and domain.bad_inputs == []
    probed = json.loads((tmp_path / "cache" / "points" / "index.json").read_text()).values()
    assert sorted(entry["facts"]["points"] for entry in probed) == sorted(vertices)
    for ref in refs:
        assert domain.load(ref).data.shape == (128, 3)


def bad_files(folder: Path) -> dict[str, str]:
    """Each bad file the domain must refuse, and the words its reason must hold."""
    folder.mkdir()
    (folder / "empty.ply").write_bytes(b"")
    nan = np.full((50, 3), np.nan)
    write_cloud(folder / "nan.pcd", nan)
    (folder / "no_faces.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    write_cloud(folder / "good.pcd", np.random.default_rng(0).normal(size=(300, 3)))
    rng = np.random.default_rng(2)
    write_cloud(folder / "binary.ply", rng.normal(size=(300, 3)))
    whole = (folder / "binary.ply").read_bytes()
    (folder / "binary.ply").write_bytes(whole[: len(whole) // 2])
    ascii_cloud = o3d.t.geometry.PointCloud(
        o3d.core.Tensor(rng.normal(size=(300, 3)).astype(np.float32))
    )
    assert o3d.t.io.write_point_cloud(str(folder / "ascii.ply"), ascii_cloud, write_ascii=True)
    text = (folder / "ascii.ply").read_bytes()
    (folder / "ascii.ply").write_bytes(text[: len(text) // 2])
    np.save(folder / "flat.npy", np.arange(10.0))
    np.savez(folder / "no_points.npz", normals=np.zeros((10, 3)))
    np.savez(folder / "odd_normals.npz", points=np.zeros((10, 3)), normals=np.zeros(10))
    torus = o3d.geometry.TriangleMesh.create_torus()
    assert o3d.io.write_triangle_mesh(str(folder / "faces_cut.ply"), torus)
    mesh_bytes = (folder / "faces_cut.ply").read_bytes()
    (folder / "faces_cut.ply").write_bytes(mesh_bytes[:-200])  # inside the face lists
    write_cloud(folder / "cut.pts", rng.normal(size=(300, 3)))
    pts_lines = (folder / "cut.pts").read_bytes().splitlines(keepends=True)
    (folder / "cut.pts").write_bytes(b"".join(pts_lines[:201]))  # the count line and 200 points
    return {
        "cut.pts": "truncated PTS: 200 points, its first line announces 300",
        "flat.npy": "a point array must be (M, 3+F)",
        "no_points.npz": "a point array must be (M, 3+F)",
        "odd_normals.npz": "its normal has shape (10, 1), expected (10, 3)",
        "faces_cut.ply": "triangles read",
        "empty.ply": "empty file",
        "nan.pcd": "no finite points: all 50 points hold NaN or inf",
        "no_faces.obj": "no mesh could be read",
        "binary.ply": "truncated PLY",
        "ascii.ply": "truncated PLY",
    }


def test_bad_files_are_left_out_with_their_names_and_reasons(tmp_path: Path) -> None:
    expected = bad_files(tmp_path / "data")
    ply = tmp_path / "data" / "mislabelled.pcd"
    write_cloud(tmp_path / "source.ply", np.random.default_rng(3).normal(size=(300, 3)))
    ply.write_bytes((tmp_path / "source.ply").read_bytes())
    expected["mislabelled.pcd"] = "its content is a PLY file but its name says .pcd"
    domain = points_domain(tmp_path / "data", tmp_path / "cache")
    refs = domain.index("train")
    reasons = {
        Path(line.split(": ", 1)[0]).name: line.split(": ", 1)[1] for line in domain.bad_inputs
    }
    assert [Path(ref.path).name for ref in refs] == ["good.pcd"]
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons.get(name))


def test_a_cloud_with_too_few_points_is_repeated_with_a_warning_or_skipped(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    xyz = np.random.default_rng(4).normal(size=(50, 3))
    write_cloud(tmp_path / "data" / "small.ply", xyz)
    with pytest.warns(FewPoints, match="small.ply \\(50\\)"):
        domain = points_domain(tmp_path / "data", tmp_path / "cache")
        (ref,) = domain.index("train")
    sample = domain.load(ref).data.numpy()
    assert sample.shape == (128, 3)
    assert len(np.unique(sample, axis=0)) == 50  # every point, repeated
    skipping = points_domain(tmp_path / "data", tmp_path / "cache", few_points="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert skipping.index("train") == []
    assert "50 points: fewer than data.points=128" in skipping.bad_inputs[0]


def test_a_large_cloud_is_voxel_down_sampled_before_farthest_points(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    xyz = rng.uniform(-1, 1, size=(20000, 3)).astype(np.float32)
    grid = voxel_down_sample(xyz, target=2000, minimum=128)
    assert 128 <= len(grid) <= 2000
    np.testing.assert_array_equal(grid, voxel_down_sample(xyz, target=2000, minimum=128))
    # voxel means lie inside the cloud's box and average several points each
    assert (np.abs(grid) <= 1).all() and len(grid) < len(xyz) / 5
    np.save(tmp_path / "scan.npy", xyz)
    domain = points_domain(tmp_path / "scan.npy", tmp_path / "cache", max_candidates=2000)
    (sample,) = sample_by_name(domain).values()
    (again,) = sample_by_name(domain).values()
    assert sample.shape == (128, 3)
    np.testing.assert_array_equal(sample, again)
    direct = points_domain(tmp_path / "scan.npy", tmp_path / "cache2")
    (exact,) = sample_by_name(direct).values()  # no grid: the written points themselves
    assert not np.allclose(np.sort(sample, axis=0), np.sort(exact, axis=0), atol=1e-3)


def test_integer_and_rgba_colours_are_scaled_into_zero_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    xyz = rng.normal(size=(300, 3)).astype(np.float32)
    rgba = rng.integers(0, 65536, size=(300, 4)).astype(np.uint16)
    intensity = np.arange(300, dtype=np.float32)  # each point's own number
    np.savez(tmp_path / "scan.npz", points=xyz, colors=rgba, intensity=intensity)
    domain = points_domain(tmp_path / "scan.npz", tmp_path / "c", features=["intensity", "colour"])
    (sample,) = sample_by_name(domain).values()
    rows = sample[:, 3].round().astype(int)
    np.testing.assert_allclose(sample[:, 4:], rgba[rows, :3] / 65535.0, atol=1e-6)


def test_the_index_is_probed_once_and_again_for_a_changed_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_cloud(tmp_path / "data" / "a.ply", np.random.default_rng(6).normal(size=(300, 3)))
    points_domain(tmp_path / "data", tmp_path / "cache").index("train")
    index_file = tmp_path / "cache" / "points" / "index.json"
    entries = json.loads(index_file.read_text())
    (entry,) = entries.values()
    entry["facts"]["points"] = 200  # only the cached entry can say this
    index_file.write_text(json.dumps(entries))
    assert points_domain(tmp_path / "data", tmp_path / "cache").index("train")[0].points == 200
    write_cloud(tmp_path / "data" / "a.ply", np.random.default_rng(6).normal(size=(400, 3)))
    assert points_domain(tmp_path / "data", tmp_path / "cache").index("train")[0].points == 400


def test_the_labelled_sample_splits_every_class_a_half_a_quarter_a_quarter(tmp_path: Path) -> None:
    domain = points_domain(None, tmp_path / "cache", sample="labelled")
    counts = {
        split: np.bincount([r.label for r in domain.index(split)])
        for split in ("train", "val", "test")
    }
    assert counts["train"].tolist() == [SHAPES_PER_CLASS // 2] * len(CLASSES)
    assert (
        counts["val"].tolist() == counts["test"].tolist() == [SHAPES_PER_CLASS // 4] * len(CLASSES)
    )
    assert domain.bad_inputs == []


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("features", ["colour", "curvature"], "data.features: unknown point feature 'curvature'"),
        ("mesh_sampling", "grid", "data.mesh_sampling=grid"),
        ("few_points", "drop", "data.few_points=drop"),
    ],
)
def test_a_wrong_setting_names_its_key(tmp_path: Path, key: str, value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        points_domain(tmp_path, tmp_path / "cache", **{key: value})
