"""Registers the points domain (entry point ``points`` in fmcore's pyproject.toml).

Importing this module must not need the ``pointcloud`` extra: open3d and fpsample are imported
inside the domain's methods and declared in ``requires``.
"""

from fmcore import hookimpl
from fmcore.domains.points.data import PointClouds


@hookimpl
def fmcore_domains() -> list[type[PointClouds]]:
    return [PointClouds]
