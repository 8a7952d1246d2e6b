"""``fmcore federate-app``: the Flower app directory that ``flwr run`` sends to a SuperLink.

``flwr new`` needs the network, so fmcore writes the app's pyproject.toml itself: the components
are fmcore's own ServerApp and ClientApp (:mod:`.apps`), and the run config key ``overrides``
carries the federation's config words. The words are composed here first, so a typo fails on the
coordinator's machine instead of inside the SuperLink.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

import tomli_w

from fmcore import __version__
from fmcore.distribution import DISTRIBUTION, extra_requirements
from fmcore.errors import ConfigError
from fmcore.federated.app_signing import SIGNATURE_FILE
from fmcore.federated.federation_config import compose_federation, federation_words
from fmcore.io import atomic_write_text
from fmcore.plugin_manager import registry

APP_FILE = "pyproject.toml"
APP_NAME = "fmcore-federation"
PUBLISHER = "fmcore"
SERVER_APP = "fmcore.federated.apps:serverapp"
CLIENT_APP = "fmcore.federated.apps:clientapp"


def flwr_requirement() -> str:
    """The flwr range fmcore's ``federated`` extra pins (the tested one), without its extras:
    a node runs the app, not the simulation engine."""
    (pinned,) = [r for r in extra_requirements("federated") if re.match(r"flwr\b", r)]
    return re.sub(r"\[[^\]]*\]", "", pinned).replace(" ", "")


def app_pyproject(words: Sequence[str]) -> str:
    """The app's pyproject.toml for these federation words."""
    project = {
        "name": APP_NAME,
        "version": "1.0.0",
        "description": "fmcore federated pretraining (written by fmcore federate-app)",
        "license": "Apache-2.0",
        # Documentation of what the nodes need: SuperLinks started with
        # --disable-runtime-dependency-installation use the installed fmcore instead.
        "dependencies": [flwr_requirement(), f"{DISTRIBUTION}[federated]=={__version__}"],
    }
    app = {
        "publisher": PUBLISHER,
        "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
        "config": {"overrides": shlex.join(words)},
    }
    return tomli_w.dumps({"project": project, "tool": {"flwr": {"app": app}}})


def write_app(directory: Path, words: Sequence[str]) -> Path:
    """Check the words, then write ``directory/pyproject.toml``; returns that file."""
    words = federation_words(words)
    compose_federation(words, registry())
    target = directory / APP_FILE
    if target.exists() and SERVER_APP not in target.read_text(encoding="utf-8"):
        raise ConfigError(
            f"{target} exists and is not an fmcore federation app: choose an empty directory"
            " (flwr run packs every .py/.toml/.md/.yaml file of the app directory)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    text = app_pyproject(words)
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        (directory / SIGNATURE_FILE).unlink(missing_ok=True)  # it signed the old words
    atomic_write_text(target, text)
    return target
