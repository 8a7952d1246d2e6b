"""A federation deployed as processes on this machine (loopback): a SuperLink, SuperNodes and the
``flwr`` command, each with its own FLWR_HOME under one root, logging to its own file; all of
them, with the SuperExec and app processes they spawn, are killed when the cluster stops.
Used by the deployment tests and by bench/federated_deploy.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr, flower-superexec
CONNECTION = "fmcore-test"
SITES = ("hospital-a", "hospital-b")
START_TIMEOUT = 60.0
RUN_TIMEOUT = 480.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def started_under(root: Path) -> list[int]:
    """Every live process whose environment names a FLWR_HOME under ``root``: the processes a test
    started and all they spawned, even those that left their parent's process group or outlived it.
    """
    marker = f"FLWR_HOME={root / 'flwr-home'}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(marker) for item in environment.split(b"\0")):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Cluster:
    """Processes started for one test, each logging to its own file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: dict[str, subprocess.Popen] = {}

    def env(self, name: str) -> dict[str, str]:
        home = self.root / "flwr-home" / name
        home.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FMCORE_CACHE": str(self.root / "cache"),
            "OMP_NUM_THREADS": "1",  # two sites share the machine's cores
            "PYTHONUNBUFFERED": "1",
        }

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def start(self, name: str, command: Sequence[str]) -> None:
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "w") as log:
            self.processes[name] = subprocess.Popen(
                command, cwd=self.root, env=self.env(name), stdout=log, stderr=subprocess.STDOUT
            )

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """The ``flwr`` command against this cluster's SuperLink connection."""
        result = subprocess.run(
            [str(BIN / "flwr"), *args],
            cwd=self.root,
            env=self.env("cli"),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.log(f"flwr-{args[0]}").write_text(result.stdout + result.stderr)
        return result

    def federate_run(self, app: Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
        """``fmcore federate-run`` of ``app`` against this cluster's SuperLink connection."""
        command = [sys.executable, "-m", "fmcore", "federate-run", str(app), CONNECTION]
        result = subprocess.run(
            command,
            cwd=self.root,
            env=self.env("cli"),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.log("federate-run").write_text(result.stdout + result.stderr)
        return result

    def await_port(self, name: str, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited with {self.processes[name].returncode}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.5)
        raise AssertionError(f"{name} did not listen on port {port} within {START_TIMEOUT} s")

    def logs(self) -> str:
        return "\n".join(
            f"===== {path.stem}\n{path.read_text(errors='replace')[-6000:]}"
            for path in sorted((self.root / "logs").glob("*.log"))
        )

    def stop(self) -> None:
        started = started_under(self.root)
        for pid in started:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15.0
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in started:
            if alive(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextmanager
def cluster(root: Path) -> Iterator[Cluster]:
    running = Cluster(root)
    try:
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop()


def write_connection(running: Cluster, address: str, security: dict[str, str | bool]) -> None:
    config = running.root / "flwr-home" / "cli" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    entries = "\n".join(f"{key} = {json.dumps(value)}" for key, value in security.items())
    config.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{address}"\n{entries}\n'
    )


def start_sites(
    running: Cluster,
    address: str,
    transport: Sequence[str],
    node_files: Mapping[str, Mapping[str, object]] = {},
) -> dict[str, Path]:
    """One SuperNode per site, each with its own runtime port and state directory; the sites in
    ``node_files`` start through ``fmcore node <site>.toml`` with those settings (checked, kept
    running, and with trusted-app-keys behind the signature gate), the others bare."""
    states = {}
    for site in SITES:
        states[site] = running.root / "sites" / site
        if site in node_files:
            settings = running.root / f"{site}.toml"
            own = {
                "site-name": site,
                "domain": "digits",
                "sample-data": True,
                "superlink": address,
                "port": free_port(),
                "state-dir": str(states[site]),
                "restart-delay": 1.0,
                "health-server-address": f"127.0.0.1:{free_port()}",
                **node_files[site],
            }
            settings.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in own.items()))
            running.start(site, [sys.executable, "-m", "fmcore", "node", str(settings)])
            continue
        running.start(
            site,
            [
                str(BIN / "flower-supernode"),
                *transport,
                "--superlink",
                address,
                "--port",
                str(free_port()),
                "--node-config",
                f'site-name="{site}" state-dir="{states[site]}"',
            ],
        )
    return states
