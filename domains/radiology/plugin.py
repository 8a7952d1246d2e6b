"""Registers the radiology domain (entry point ``radiology`` in fmcore's pyproject.toml).

Importing this module must not need the ``radiology`` extra: MONAI, nibabel and pydicom are
imported inside the domain's methods and declared in ``requires``.
"""

from fmcore import hookimpl
from fmcore.domains.radiology.data import Radiology


@hookimpl
def fmcore_domains() -> list[type[Radiology]]:
    return [Radiology]
