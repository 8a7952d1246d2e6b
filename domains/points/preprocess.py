"""From a decoded cloud to the fixed-size (N, 3 + F) sample, as Point-MAE prepares its inputs:
features chosen and stacked, non-finite points dropped, very large clouds voxel down-sampled,
farthest point sampling to ``data.points``, centred and scaled into the unit sphere.

Farthest point sampling is fpsample's exact FPS from the first point (C++; its bucketed kd-tree
variants are faster but neither start where asked nor pick the same points), which is linear
in the points per pick, so above ``max_candidates`` points a voxel grid first averages
neighbours: a 1M-point scan is never sampled point by point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fmcore.domains.points.formats import UnusableCloud
from fmcore.domains.points.readers import FEATURE_WIDTHS, Cloud

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


def feature_problem(available: Sequence[str], columns: int, features: Sequence[str]) -> str | None:
    """Why a file with features ``available`` and ``columns`` unnamed extra columns (an .npy's)
    cannot give ``features``, or None. Unnamed columns stand for the requested features, in
    order, when their widths add up."""
    wanted = [name for name in features if name not in available]
    if not wanted:
        return None
    if columns:
        width = sum(FEATURE_WIDTHS[name] for name in features)
        if columns != width:
            return f"{columns} columns after xyz, data.features={list(features)} needs {width}"
        return None
    return f"it has no {', '.join(wanted)} (data.features asks for it)"


def stack_features(cloud: Cloud, features: Sequence[str]) -> np.ndarray:
    """xyz and the requested features side by side (see :func:`feature_problem`)."""
    columns = cloud.features.get("columns")
    problem = feature_problem(
        sorted(cloud.features), 0 if columns is None else columns.shape[1], features
    )
    if problem:
        raise UnusableCloud(problem)
    if columns is not None and any(name not in cloud.features for name in features):
        return np.concatenate([cloud.xyz, columns], axis=1)
    return np.concatenate([cloud.xyz, *(cloud.features[name] for name in features)], axis=1)


def finite_rows(table: np.ndarray) -> np.ndarray:
    return table[np.isfinite(table).all(axis=1)]


def farthest_points(xyz: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` farthest-point samples of ``xyz`` (M, 3), from point 0."""
    import fpsample

    return np.sort(fpsample.fps_sampling(xyz, count, start_idx=0))


def voxel_down_sample(table: np.ndarray, target: int, minimum: int) -> np.ndarray:
    """Rows averaged per voxel (features too), in the voxels' sorted order, with a voxel size
    that leaves between ``minimum`` and ``target`` points, found by rescaling a guess: points on
    a surface scale as 1 / size**2. Each rescaling aims at ``VOXEL_AIM`` of ``target`` so it
    lands below it instead of creeping up to it from above; if no size lands in range, the
    last grid with at least ``minimum`` points is kept (the whole cloud if none has).

    NumPy rather than open3d: open3d fills its voxel table in parallel, so the order of its
    output, and with it the farthest point sampling that follows, can change between runs.
    """
    xyz = table[:, :XYZ].astype(np.float64)
    low = xyz.min(axis=0)
    aim = VOXEL_AIM * target
    size = max(float(np.ptp(xyz, axis=0).max()), 1e-12) / math.sqrt(aim)
    kept = table
    for _ in range(VOXEL_TRIES):
        cells = np.floor((xyz - low) / size).astype(np.int64)  # (M, 3)
        shape = cells.max(axis=0) + 1
        keys = (cells[:, 0] * shape[1] + cells[:, 1]) * shape[2] + cells[:, 2]
        _, voxel, counts = np.unique(keys, return_inverse=True, return_counts=True)
        if len(counts) >= minimum:
            sums = [np.bincount(voxel, weights=column) for column in table.T]
            kept = (np.stack(sums, axis=1) / counts[:, None]).astype(np.float32)
            if len(counts) <= target:
                break
        size *= math.sqrt(len(counts) / aim)
    return kept


def unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """Centred on the centroid and scaled so the farthest point lies on the unit sphere."""
    centred = xyz - xyz.mean(axis=0)
    radius = float(np.linalg.norm(centred, axis=1).max())
    return centred / radius if radius > 0 else centred
