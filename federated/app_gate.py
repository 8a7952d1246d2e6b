"""The gate in front of Flower's app processes: an app bundle is installed (and its code run) only
when a trusted key signed it (:mod:`.app_signing`).

A SuperNode starts each ClientApp as a ``flwr-clientapp`` process found on ``PATH`` (through
its SuperExec); a SuperLink starts ServerApps as ``flwr-serverapp``. :func:`write_gate` puts
commands of those names in a directory that ``fmcore node`` (and ``fmcore link``) place first
on the Flower process's ``PATH``. Each runs Flower's own app process with one change: before
Flower installs the bundle it receives, the signature is checked, and a refused bundle ends the
task with an error reply naming the reason, before any file of it is unpacked.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from fmcore.federated.app_signing import read_trusted_keys, verify_bundle

#: Flower's app processes: the module whose ``install_from_fab`` installs the bundle, and the
#: command's entry point (flwr 1.41/1.42; tests/test_federated_deploy.py runs both for real).
APP_PROCESSES = {
    "flwr-clientapp": ("flwr.supernode.runtime.run_clientapp", "flwr.supernode.cli:flwr_clientapp"),
    "flwr-serverapp": ("flwr.superlink.runtime.run_serverapp", "flwr.superlink.cli:flwr_serverapp"),
}


def _verified_install(install: Callable[..., Path], trusted_keys: Path) -> Callable[..., Path]:
    def install_if_signed(fab_content: bytes, *args: object, **kwargs: object) -> Path:
        key_id = verify_bundle(fab_content, read_trusted_keys(trusted_keys))
        print(f"fmcore: app bundle signed by {key_id} (trusted in {trusted_keys})", file=sys.stderr)
        return install(fab_content, *args, **kwargs)

    return install_if_signed


def run_gated(command: str, trusted_keys: Path) -> None:
    """Run Flower's ``command`` process (``flwr-clientapp`` or ``flwr-serverapp``) in this
    process, with the signature check before its bundle is installed."""
    runner_name, entry = APP_PROCESSES[command]
    runner = importlib.import_module(runner_name)
    runner.install_from_fab = _verified_install(runner.install_from_fab, trusted_keys)
    module_name, function = entry.split(":")
    sys.argv[0] = command
    getattr(importlib.import_module(module_name), function)()


def write_gate(directory: Path, trusted_keys: Path) -> Path:
    """Write the gated ``flwr-clientapp`` and ``flwr-serverapp`` commands into ``directory``
    (this Python, this fmcore); returns ``directory``, to go first on the Flower process's
    ``PATH``."""
    directory.mkdir(parents=True, exist_ok=True)
    for command in APP_PROCESSES:
        script = directory / command
        script.write_text(
            f"#!{sys.executable}\n"
            "from pathlib import Path\n"
            "from fmcore.federated.app_gate import run_gated\n"
            f"run_gated({command!r}, Path({str(trusted_keys.resolve())!r}))\n"
        )
        script.chmod(0o755)
    return directory
