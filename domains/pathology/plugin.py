"""Registers the pathology domain (entry point ``pathology`` in fmcore's pyproject.toml).

Importing this module must not need the ``pathology`` extra: the domain imports OpenSlide and
tifffile inside its methods, and declares them in ``requires`` so a missing one is named with
its install command when the domain is used.
"""

from fmcore import hookimpl
from fmcore.domains.pathology.data import Pathology


@hookimpl
def fmcore_domains() -> list[type[Pathology]]:
    return [Pathology]
