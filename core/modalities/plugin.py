"""Registers the core modalities (entry point ``modalities`` in fmcore's pyproject.toml)."""

from fmcore import hookimpl
from fmcore.modalities.base import Modality
from fmcore.modalities.image2d import Image2D
from fmcore.modalities.points import Points
from fmcore.modalities.video import Video
from fmcore.modalities.volume3d import Volume3D


@hookimpl
def fmcore_modalities() -> list[Modality]:
    return [Image2D(), Volume3D(), Video(), Points()]
