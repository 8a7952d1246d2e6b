"""fmcore: self-supervised foundation-model pretraining, central or federated.

Plugin authors import from ``fmcore.api`` only (the contracts, ``hookimpl``, errors, file
writers); every other module is internal. ``fmcore.hookspecs`` documents every hook.
"""

from importlib.metadata import PackageNotFoundError, version

from fmcore.distribution import DISTRIBUTION
from fmcore.hookspecs import hookimpl

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "hookimpl"]
