"""Registers the video domain (entry point ``video`` in fmcore's pyproject.toml).

Importing this module must not need the ``video`` extra: decord, PyAV and pydicom are imported
inside the domain's methods and declared in ``requires``.
"""

from fmcore import hookimpl
from fmcore.domains.video.data import Video


@hookimpl
def fmcore_domains() -> list[type[Video]]:
    return [Video]
