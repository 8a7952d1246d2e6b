"""fmcore-dermatology: an example third-party fmcore plugin providing ``domain=dermatology``."""

from fmcore_dermatology.data import Dermatology

__all__ = ["Dermatology"]
