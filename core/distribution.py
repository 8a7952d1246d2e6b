"""fmcore as an installed distribution: its name on the package index and its extras.

The import package, the command and the plugin entry-point group are ``fmcore``; the distribution
is ``fmcore-ssl``, because "fmcore" on the package index is an unrelated project.
"""

from __future__ import annotations

import re
import shlex
from importlib import metadata

DISTRIBUTION = "fmcore-ssl"


def extra_requirements(extra: str) -> list[str]:
    """The requirements the installed distribution declares for its optional ``extra``."""
    marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
    wanted = [
        requirement.split(";", 1)[0].strip()
        for requirement in metadata.requires(DISTRIBUTION) or []
        if marker.search(requirement)
    ]
    if not wanted:
        raise ValueError(f"the installed fmcore declares no extra '{extra}'")
    return wanted


def extra_install_command(extra: str) -> str:
    """The pip command that installs fmcore's optional ``extra``: its requirements named one by
    one, because "fmcore" on the package index is an unrelated project (``pip install
    "fmcore[extra]"`` could fetch it)."""
    return "pip install " + " ".join(shlex.quote(r) for r in extra_requirements(extra))
