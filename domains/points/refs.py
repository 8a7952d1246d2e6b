"""What the engine samples over: one point-cloud or mesh file, as the index found it."""

from __future__ import annotations

from typing import NamedTuple


class CloudRef(NamedTuple):
    """One file: where it is, what its probe found, and the seed its mesh is sampled with."""

    path: str
    cloud_id: str  # the file's path below data.root
    kind: str  # cloud, mesh or array
    points: int  # finite points of a cloud or an array, data.mesh_points of a mesh
    seed: int
    label: int = -1

    def __str__(self) -> str:
        return self.path
