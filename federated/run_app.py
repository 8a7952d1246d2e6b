"""``fmcore federate-run APP [CONNECTION]``: ``flwr run`` that says whether the federation worked.

``flwr run --stream`` (flwr 1.41/1.42) exits 0 whatever became of the run, so a script or a
scheduler cannot tell a federation that failed from one that finished. This submits the app
with ``flwr run``, streams its log with ``flwr log``, then reads the run's final status with
``flwr ls`` and exits 0 only for ``finished:completed``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from fmcore.errors import FmcoreError
from fmcore.federated.app_signing import stale_signature
from fmcore.federated.flower_commands import flower_executable

COMPLETED = "finished:completed"
POLL_SECONDS = 2.0  # between status reads, once the log stream has ended


def _flwr_json(*args: str) -> dict:
    """A ``flwr`` command's ``--format json`` answer; its failure named with its output."""
    result = subprocess.run(
        [flower_executable("flwr"), *args, "--format", "json"], capture_output=True, text=True
    )
    try:
        answer = json.loads(result.stdout)
    except json.JSONDecodeError:
        answer = {}
    if result.returncode != 0 or not answer.get("success"):
        output = (result.stdout + result.stderr).strip()
        raise FmcoreError(f"flwr {' '.join(args)} failed: {output}")
    return answer


def run_status(run_id: str, connection: list[str]) -> str:
    """The run's status as ``flwr ls`` gives it (``pending``, ``running``,
    ``finished:completed``, ``finished:failed`` ...)."""
    answer = _flwr_json("ls", *connection, "--run-id", run_id)
    (run,) = answer["runs"]
    return str(run["status"])


def run_federation_app(app_dir: Path, connection: str | None) -> tuple[str, str]:
    """Submit ``app_dir``, stream its log until the run ends; returns (run id, final status)."""
    where = [connection] if connection else []
    problem = stale_signature(app_dir)
    if problem is not None:
        print(f"warning: {problem} (fmcore federate-sign {app_dir} --key KEY)", flush=True)
    run_id = str(_flwr_json("run", str(app_dir), *where)["run-id"])
    print(f"submitted run {run_id}; streaming its log", flush=True)
    subprocess.run([flower_executable("flwr"), "log", run_id, *where, "--stream"])
    status = run_status(run_id, where)
    while not status.startswith("finished"):  # the stream ended before the status was written
        time.sleep(POLL_SECONDS)
        status = run_status(run_id, where)
    return run_id, status
