"""The points domain: point-cloud and mesh files under ``data.root``.

``index`` finds the files (:mod:`.formats`), probes each once (kind, usable points, features:
:mod:`.readers`, cached by path, size and modification time), leaves out the unusable ones as
bad inputs with their reason, and, with ``data.labels``, keeps the labelled ones in their split.
``load`` reads a file (a mesh is sampled with a seed fixed per file) and prepares it
(:mod:`.preprocess`) into an (N, 3 + F) float tensor: xyz in the unit sphere, then the features
``data.features`` names.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from fmcore.domain import Domain, Sample
from fmcore.domains.points.formats import UnusableCloud, is_point_file
from fmcore.domains.points.preprocess import Preparation, feature_problem
from fmcore.domains.points.readers import MESH_SAMPLINGS, MeshSampling, feature_name, probe, read
from fmcore.domains.points.refs import CloudRef
from fmcore.errors import BadSample, ConfigError
from fmcore.file_checks import files_under
from fmcore.probe_cache import probe_files
from fmcore.splits import SPLITS, check_split, select

INPUT_KINDS = "point-cloud, mesh or array files"  # what data.labels names
INDEX_VERSION = 1  # bump when what a probe records changes
FEW_POINTS = ("repeat", "skip")


class FewPoints(UserWarning):
    """Clouds with fewer usable points than a sample has, repeated to fill it."""


class PointClouds(Domain):
    name = "points"
    modality = "points"
    requires = ("open3d", "fpsample")
    extra = "pointcloud"
    splits = SPLITS
    sample_kinds = ("plain", "labelled")
    partition_keys = ("cloud", "label")
    float_samples = True  # coordinates and features are floats by nature

    def __init__(self, data: DictConfig, cache_dir: Path) -> None:
        super().__init__(data, cache_dir)
        try:
            features = tuple(feature_name(str(name)) for name in data.get("features") or ())
        except ValueError as error:
            raise ConfigError(f"data.features: {error}") from None
        self.preparation = Preparation(
            points=self.sample_size[0],
            features=features,
            max_candidates=int(data.max_candidates),
        )
        self.mesh_sampling = MeshSampling(str(data.mesh_sampling), int(data.mesh_points))
        if self.mesh_sampling.points < self.preparation.points:
            raise ConfigError(
                f"data.mesh_points={self.mesh_sampling.points} is below data.points="
                f"{self.preparation.points}: a mesh must give at least a sample's points"
            )
        if self.mesh_sampling.method not in MESH_SAMPLINGS:
            raise ConfigError(
                f"data.mesh_sampling={self.mesh_sampling.method}: choose"
                f" {' or '.join(MESH_SAMPLINGS)}"
            )
        self.few_points = str(data.few_points)
        if self.few_points not in FEW_POINTS:
            raise ConfigError(f"data.few_points={self.few_points}: choose repeat or skip")

    @property
    def sample_size(self) -> tuple[int, ...]:
        return (int(self.data.points),)

    @property
    def channels(self) -> int:
        return self.preparation.channels

    def find_samples(self, split: str) -> Sequence[CloudRef]:
        table = self.label_table()
        check_split(split, table, self.name)
        root = self.resolve_root()
        paths = [path for path in files_under(root) if is_point_file(path)]
        found = probe_files(
            paths,
            self.cache_dir / "points" / "index.json",
            probe,
            UnusableCloud,
            INDEX_VERSION,
            workers=int(self.data.get("index_workers") or 4),
        )
        seed = int(self.data.get("seed") or 0)
        usable: list[CloudRef] = []
        few: list[str] = []
        for path, facts in zip(paths, found, strict=True):
            cloud_id = path.name if root.is_file() else path.relative_to(root).as_posix()
            reason = facts if isinstance(facts, str) else self._unusable(facts)
            if reason:
                self.report_bad_input(path, reason)
                continue
            points = int(facts["points"]) if facts["kind"] != "mesh" else self.mesh_sampling.points
            if points < self.preparation.points:
                few.append(f"{path} ({points})")
            sample_seed = zlib.crc32(f"{seed}:{cloud_id}".encode()) & 0x7FFFFFFF  # open3d: int32
            usable.append(CloudRef(str(path), cloud_id, str(facts["kind"]), points, sample_seed))
        if few:
            warnings.warn(
                f"{len(few)} clouds have fewer points than data.points="
                f"{self.preparation.points} and are repeated to fill a sample"
                f" (data.few_points=skip leaves them out): {', '.join(few[:5])}"
                + (" ..." if len(few) > 5 else ""),
                FewPoints,
                stacklevel=2,
            )
        chosen = select(usable, split, table, lambda ref: Path(ref.path), INPUT_KINDS)
        return [ref._replace(label=label) for ref, label in chosen]

    def _unusable(self, facts: dict) -> str | None:
        """Why a probed file cannot serve this config, or None."""
        problem = feature_problem(
            facts["features"], facts.get("columns", 0), self.preparation.features
        )
        if problem:
            return problem
        if (
            facts["kind"] != "mesh"
            and self.few_points == "skip"
            and facts["points"] < self.preparation.points
        ):
            return f"{facts['points']} points: fewer than data.points={self.preparation.points}"
        return None

    def load(self, ref: CloudRef) -> Sample:
        try:
            cloud = read(Path(ref.path), ref.kind, self.mesh_sampling, ref.seed)
            points = self.preparation(cloud)
        except UnusableCloud as error:
            raise BadSample(ref.path, str(error)) from None
        return Sample(data=torch.from_numpy(points), label=ref.label, meta={"cloud": ref.cloud_id})

    def partition_key(self, ref: CloudRef, by: str) -> str | int:
        return ref.cloud_id if by == "cloud" else ref.label

    def write_sample_data(self, directory: Path) -> None:
        from fmcore.domains.points.sample_data import write_labelled_shapes, write_sample_files

        if self.sample_kind == "labelled":
            write_labelled_shapes(directory)
        else:
            write_sample_files(directory)
