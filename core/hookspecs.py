"""Hook specifications: the whole plugin API of fmcore, one documented function per hook.

A plugin is a module (or object) registered under the ``fmcore`` entry-point group. It implements
any of these hooks by defining a function of the same name decorated with ``fmcore.hookimpl``::

    # my_plugin.py, registered as:  [project.entry-points.fmcore] mine = "my_plugin"
    from fmcore import hookimpl

    @hookimpl
    def fmcore_domains():
        return [MyDomain]

Built-in domains and methods are registered exactly this way, through fmcore's own entry points.
Provider hooks (``fmcore_domains`` ...) are called once per plugin when plugins load; lifecycle
hooks (``fmcore_train_start`` ...) are called on every plugin as events happen, with keyword
arguments, and their return values are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from fmcore.domain import Domain
    from fmcore.method import Method
    from fmcore.modalities.base import Modality

PROJECT = "fmcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- providers: what a plugin adds -----------------------------------------------------------


@hookspec
def fmcore_domains() -> list[type[Domain]]:
    """Return the :class:`fmcore.domain.Domain` subclasses this plugin provides.

    Each class's ``name`` is what users select with ``domain=<name>``; a config file
    ``domain/<name>.yaml`` must exist in a config directory (see :func:`fmcore_config_dirs`).
    A name already provided by another plugin is reported and this plugin's class is ignored.
    """


@hookspec
def fmcore_methods() -> list[type[Method]]:
    """Return the :class:`fmcore.method.Method` subclasses this plugin provides.

    Each class's ``name`` is selected with ``method=<name>`` and configured by
    ``method/<name>.yaml``. Duplicate names are reported, the later one ignored.
    """


@hookspec
def fmcore_modalities() -> list[Modality]:
    """Return :class:`fmcore.modalities.base.Modality` instances (tokenizer, target, views).

    A domain names its modality by ``Modality.name``; core provides image2d, volume3d, video
    and points.
    """


@hookspec
def fmcore_trunks() -> dict[str, Any]:
    """Return ``{name: factory}`` where ``factory(encoder_config)`` builds a
    :class:`fmcore.backbones.trunk.Trunk` from the ``encoder`` config section.

    ``encoder.trunk=<name>`` selects one. A factory reads the shared keys with
    ``trunk_settings(encoder_config)`` and its own, kept under ``encoder.<name>``, with
    ``trunk_options(encoder_config, name, schema)``. The trunk consumes
    :class:`fmcore.modalities.base.Tokens` and returns a
    :class:`fmcore.backbones.trunk.TrunkOutput`.
    """


@hookspec
def fmcore_config_dirs() -> list[Path]:
    """Return directories holding config groups (``domain/``, ``method/``, ``encoder/`` ...).

    Files found there become choices on the command line (``domain=<file stem>``). A directory
    may also add new groups. Directories are searched after fmcore's own, and a file may not
    replace one that an earlier directory already provides.
    """


# --- lifecycle: what a plugin observes ------------------------------------------------------


@hookspec
def fmcore_train_start(config: Any, run_dir: Path, world_size: int) -> None:
    """Called once on every rank after set-up, before the first step (also on resume).

    config is the resolved OmegaConf config; run_dir the run directory.
    """


@hookspec
def fmcore_step_end(step: int, metrics: dict[str, float], run_dir: Path) -> None:
    """Called on rank 0 after each optimizer step with that step's metrics: the keys and values
    metrics.jsonl logs (``step`` included), and after a periodic evaluation its ``eval/*`` too."""


@hookspec
def fmcore_checkpoint_saved(
    step: int, path: Path, run_dir: Path, method: Method, domain: Domain, config: Any
) -> None:
    """Called on rank 0 after a checkpoint directory is complete and renamed into place.

    ``method`` is the live method on its device (not a copy: leave its weights, its training
    mode and the global random state as they were), ``domain`` the run's domain, ``config``
    the resolved config. A hook draws or measures with them; it never rebuilds the run.
    """


@hookspec
def fmcore_train_end(summary: dict[str, Any], run_dir: Path) -> None:
    """Called on every rank when training finishes; summary holds steps, skipped samples, time."""


@hookspec
def fmcore_federated_round_end(
    server_round: int, metrics: dict[str, float], checkpoint: Path, run_dir: Path, config: Any
) -> None:
    """Called on the federated server after a round is aggregated and its checkpoint is written.

    ``metrics`` are the round's aggregated metrics (``rounds.jsonl``'s), ``run_dir`` the
    federation's directory and ``config`` its resolved config. Each site's local training calls
    the training hooks above with the site's own config and run directory.
    """


__all__ = ["PROJECT", "hookimpl", "hookspec"]
