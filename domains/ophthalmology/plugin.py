"""Registers the ophthalmology domain (entry point ``ophthalmology`` in fmcore's pyproject.toml).

Importing this module must not need the ``ophthalmology`` extra: Pillow, tifffile, pydicom and
scikit-image are imported inside the domain's methods and declared in ``requires``.
"""

from fmcore import hookimpl
from fmcore.domains.ophthalmology.data import Ophthalmology


@hookimpl
def fmcore_domains() -> list[type[Ophthalmology]]:
    return [Ophthalmology]
