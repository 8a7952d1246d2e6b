"""The gate in front of Flower's app processes: an app bundle is installed (and its code run) only
when a trusted key signed it (:mod:`.app_signing`), and only the one kind of app process a
machine needs runs at all.

A SuperNode starts each ClientApp as a ``flwr-clientapp`` process found on ``PATH`` (through
its SuperExec); a SuperLink starts ServerApps as ``flwr-serverapp``, and Flower's SuperExec can
also start agent apps, simulations, models and connectors by their commands (flwr's
``TASK_TYPE_TO_COMMAND``). :func:`write_gate` writes a command of every one of those names into
a directory that ``fmcore node`` and ``fmcore link`` place first on the Flower process's
``PATH``: the allowed kind (``flwr-clientapp`` at a node, ``flwr-serverapp`` at the SuperLink)
runs Flower's own app process with Flower's ``install_from_fab`` replaced by one that checks the
signature first, so a refused bundle ends the task with an error naming the reason before any
file of it is unpacked; every other kind is refused outright.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path

from fmcore.errors import ConfigError
from fmcore.federated.app_signing import read_trusted_keys, record_signed_config, verify_bundle

#: What a gated process exits with when its kind of app is not run on this machine.
REFUSED_KIND = 3


def task_commands() -> list[str]:
    """Every app command Flower's SuperExec may start (flwr 1.41/1.42)."""
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    return sorted(TASK_TYPE_TO_COMMAND.values())


def _verified_install(install: Callable[..., Path], trusted_keys: Path) -> Callable[..., Path]:
    def install_if_signed(fab_content: bytes, *args: object, **kwargs: object) -> Path:
        key_id = verify_bundle(fab_content, read_trusted_keys(trusted_keys))
        record_signed_config(fab_content)
        print(f"fmcore: app bundle signed by {key_id} (trusted in {trusted_keys})", file=sys.stderr)
        return install(fab_content, *args, **kwargs)

    return install_if_signed


def _gate_installs(trusted_keys: Path) -> None:
    """Replace Flower's ``install_from_fab`` everywhere it is bound: in its own module before any
    runner imports it, and in runner modules already imported."""
    import flwr.cli.install as flower_install

    original = flower_install.install_from_fab
    checked = _verified_install(original, trusted_keys)
    flower_install.install_from_fab = checked
    for module in list(sys.modules.values()):
        if getattr(module, "install_from_fab", None) is original:
            module.install_from_fab = checked


def run_gated(command: str, trusted_keys: Path | None, allowed: str) -> None:
    """Run Flower's ``command`` process in this process if it is the ``allowed`` kind, with the
    signature check before its bundle is installed when ``trusted_keys`` is given."""
    if command != allowed:
        print(f"fmcore: {command} does not run on this machine (only {allowed})", file=sys.stderr)
        raise SystemExit(REFUSED_KIND)
    if trusted_keys is not None:
        _gate_installs(trusted_keys)
    (entry,) = entry_points(group="console_scripts", name=command)
    sys.argv[0] = command
    entry.load()()


def write_gate(directory: Path, trusted_keys: Path | None, allowed: str) -> Path:
    """Write a gated command for every app command Flower may start into ``directory`` (this
    Python, this fmcore): ``allowed`` runs behind the signature check (no check without
    ``trusted_keys``), the rest refuse. Returns ``directory``, to go first on ``PATH``."""
    commands = task_commands()
    if allowed not in commands:
        raise ConfigError(f"{allowed} is not one of Flower's app commands ({', '.join(commands)})")
    if trusted_keys is not None:
        read_trusted_keys(trusted_keys)  # a bad file stops the start, not the first app
    directory.mkdir(parents=True, exist_ok=True)
    keys = "None" if trusted_keys is None else f"Path({str(trusted_keys.resolve())!r})"
    for command in commands:
        program = (
            "import sys\nfrom pathlib import Path\n"
            "from fmcore.federated.app_gate import run_gated\n"
            f"run_gated({command!r}, {keys}, {allowed!r})\n"
        )
        script = directory / command
        # through /bin/sh: a shebang cannot hold every path sys.executable may have
        script.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(program)} "$@"\n'
        )
        script.chmod(0o755)
    return directory


def gated_path(directory: Path, trusted_keys: Path | None, allowed: str) -> str:
    """``PATH`` for a Flower process: the gate (in ``directory``), then this environment's
    programs, then the inherited ``PATH``."""
    entries: Iterable[str] = (
        str(write_gate(directory, trusted_keys, allowed)),
        str(Path(sys.executable).parent),
        os.environ.get("PATH", ""),
    )
    return os.pathsep.join(entries)
