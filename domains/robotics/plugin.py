"""Registers the robotics domain (entry point ``robotics`` in fmcore's pyproject.toml).

Importing this module must not need the ``robotics`` extra: pyarrow, h5py, decord and PyAV are
imported inside the domain's methods and declared in ``requires``.
"""

from fmcore import hookimpl
from fmcore.domains.robotics.data import Robotics


@hookimpl
def fmcore_domains() -> list[type[Robotics]]:
    return [Robotics]
