"""From a decoded cloud to the fixed-size (N, 3 + F) sample, as Point-MAE prepares its inputs:
features chosen and stacked, non-finite points dropped, very large clouds voxel down-sampled,
farthest point sampling to ``data.points``, centred and scaled into the unit sphere.

Farthest point sampling is fpsample's exact FPS from the file's first point (C++; its bucketed
kd-tree variants are faster but neither start where asked nor pick the same points), which is
linear in the points per pick, so above ``max_candidates`` points a voxel grid first averages
neighbours (open3d): a 1M-point scan is never sampled point by point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fmcore.domains.points.formats import UnusableCloud
from fmcore.domains.points.readers import FEATURE_WIDTHS, Cloud, open3d

XYZ = 3
VOXEL_TRIES = 6  # voxel sizes tried before the candidate cap is met
VOXEL_AIM = 0.75  # share of the cap a voxel size is chosen for


@dataclass(frozen=True)
class Preparation:
    points: int  # N, the points of a sample
    features: tuple[str, ...]  # canonical feature names, in channel order
    max_candidates: int  # clouds above this many points are voxel down-sampled first

    @property
    def channels(self) -> int:
        return XYZ + sum(FEATURE_WIDTHS[name] for name in self.features)

    def __call__(self, cloud: Cloud) -> np.ndarray:
        """The (N, 3 + F) float32 sample; a cloud with fewer than N usable points is repeated
        (the index warns about those, or leaves them out, by ``data.few_points``)."""
        table = finite_rows(stack_features(cloud, self.features))
        if len(table) == 0:
            raise UnusableCloud("no finite points")
        if len(table) > self.max_candidates:
            table = voxel_down_sample(table, self.max_candidates, minimum=self.points)
        if len(table) > self.points:
            table = table[farthest_points(table[:, :XYZ], self.points)]
        elif len(table) < self.points:
            table = np.resize(table, (self.points, table.shape[1]))  # repeats rows in order
        table[:, :XYZ] = unit_sphere(table[:, :XYZ])
        return table


def stack_features(cloud: Cloud, features: Sequence[str]) -> np.ndarray:
    """xyz and the requested features side by side. An array's unnamed extra ``columns`` are
    taken as the requested features, in order, when their widths add up."""
    wanted = [name for name in features if name not in cloud.features]
    if wanted and "columns" in cloud.features:
        width = sum(FEATURE_WIDTHS[name] for name in features)
        columns = cloud.features["columns"]
        if columns.shape[1] != width:
            raise UnusableCloud(
                f"{columns.shape[1]} columns after xyz, data.features={list(features)} needs"
                f" {width}"
            )
        return np.concatenate([cloud.xyz, columns], axis=1)
    if wanted:
        raise UnusableCloud(f"it has no {', '.join(wanted)} (data.features asks for it)")
    return np.concatenate([cloud.xyz, *(cloud.features[name] for name in features)], axis=1)


def finite_rows(table: np.ndarray) -> np.ndarray:
    return table[np.isfinite(table).all(axis=1)]


def farthest_points(xyz: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` farthest-point samples of ``xyz`` (M, 3), from point 0."""
    import fpsample

    return np.sort(fpsample.fps_sampling(xyz, count, start_idx=0))


def voxel_down_sample(table: np.ndarray, target: int, minimum: int) -> np.ndarray:
    """Rows averaged per voxel (features too) with a voxel size that leaves between ``minimum``
    and ``target`` points, found by rescaling a guess: points on a surface scale as 1 / size**2.
    Each rescaling aims at ``VOXEL_AIM`` of ``target``, so it lands below it instead of creeping
    up to it from above; if no size lands in range, the last grid with enough points is kept.
    """
    o3d = open3d()
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(table[:, :XYZ])))
    if table.shape[1] > XYZ:
        cloud.point.features = o3d.core.Tensor(np.ascontiguousarray(table[:, XYZ:]))
    aim = VOXEL_AIM * target
    size = float(np.ptp(table[:, :XYZ], axis=0).max()) / math.sqrt(aim)
    kept = table
    for _ in range(VOXEL_TRIES):
        sampled = cloud.voxel_down_sample(size)
        count = len(sampled.point.positions)
        if count >= minimum:
            kept = _table(sampled, table.shape[1])
            if count <= target:
                break
        size *= math.sqrt(count / aim)
    return kept


def _table(cloud: object, channels: int) -> np.ndarray:
    xyz = cloud.point.positions.numpy()
    if channels == XYZ:
        return xyz
    return np.concatenate([xyz, cloud.point.features.numpy()], axis=1)


def unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """Centred on the centroid and scaled so the farthest point lies on the unit sphere."""
    centred = xyz - xyz.mean(axis=0)
    radius = float(np.linalg.norm(centred, axis=1).max())
    return centred / radius if radius > 0 else centred
