"""``fmcore node NODE.toml``: a hospital's SuperNode from one settings file, checked before it
joins and restarted with back-off when it stops.

The file holds what the hospital decides: its site name, data, domain, device and batch size,
where state lives, how to reach the SuperLink and with which key. Before Flower's
``flower-supernode`` starts, fmcore checks what would otherwise fail at the first round, far from
the hospital's eyes: the domain and its extras are installed, the data root exists and indexes
to at least one sample (no silent fallback to the embedded sample), the state directory is
writable. A failed check exits non-zero naming the setting and the file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import get_args, get_type_hints

from fmcore.config import compose, config_sources
from fmcore.errors import ConfigError, FmcoreError
from fmcore.factory import build_domain
from fmcore.federated.app_gate import gated_path
from fmcore.federated.app_signing import read_trusted_keys
from fmcore.federated.flower_commands import flower_executable
from fmcore.plugin_manager import Registry

#: The exit code of a command refusing its arguments: restarting cannot help.
USAGE_ERROR = 2
#: A SuperNode that ran this long (seconds) before stopping was healthy: waits start over.
HEALTHY_RUN = 600.0


@dataclass(frozen=True)
class NodeSettings:
    """A node file's keys (TOML names with dashes)."""

    site_name: str
    domain: str
    superlink: str
    data_root: str | None = None
    sample_data: bool = False  # true: train on the domain's embedded sample (a trial, not a site)
    state_dir: str | None = None
    device: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    root_certificates: str | None = None
    insecure: bool = False
    auth_supernode_private_key: str | None = None
    auth_supernode_public_key: str | None = None
    trusted_app_keys: str | None = None  # YAML of the keys whose signed apps this node runs
    allow_unsigned_apps: bool = False  # a trial only: the node runs any app submitted
    health_server_address: str | None = None
    port: int | None = None  # the SuperNode's runtime API for its ClientApp (Flower's 9094)
    restart_delay: float = 5.0  # seconds before the first restart; doubles up to max_delay
    max_delay: float = 300.0
    max_restarts: int | None = None  # None: restart for ever
    source: Path = field(default=Path("node.toml"), compare=False)

    def node_config(self) -> str:
        """The ``--node-config`` string: the site's keys as TOML ``key=value`` pairs."""
        values = {
            "site-name": self.site_name,
            "domain": self.domain,
            "state-dir": self.state_dir,
            "data-root": self.data_root,
            "device": self.device,
            "batch-size": self.batch_size,
            "num-workers": self.num_workers,
        }
        return " ".join(f"{key}={json.dumps(v)}" for key, v in values.items() if v is not None)

    def supernode_command(self) -> list[str]:
        executable = flower_executable("flower-supernode")
        command = [executable, "--superlink", self.superlink]
        command += ["--insecure"] if self.insecure else []
        for flag, value in (
            ("--root-certificates", self.root_certificates),
            ("--auth-supernode-private-key", self.auth_supernode_private_key),
            ("--auth-supernode-public-key", self.auth_supernode_public_key),
            ("--health-server-address", self.health_server_address),
            ("--port", self.port),
        ):
            if value is not None:
                command += [flag, str(value)]
        return [*command, "--node-config", self.node_config()]

    def supernode_environment(self, scratch: Path) -> dict[str, str]:
        """The SuperNode's environment: on ``PATH`` first the gate (in ``scratch``: ClientApps
        only, signed by the trusted app keys when set), then this environment's Flower."""
        keys = None if self.trusted_app_keys is None else Path(self.trusted_app_keys)
        return {**os.environ, "PATH": gated_path(scratch / "bin", keys, "flwr-clientapp")}


def read_node_settings(path: Path) -> NodeSettings:
    """The node file at ``path``, every key checked: unknown or missing keys are named."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: not a readable TOML node file ({error})") from error
    known = {f.name.replace("_", "-"): f for f in fields(NodeSettings) if f.name != "source"}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    hints = get_type_hints(NodeSettings)
    for key, value in raw.items():
        wanted = _toml_types(hints[known[key].name])
        if isinstance(value, bool) != (bool in wanted) or not isinstance(value, wanted):
            names = " or ".join(kind.__name__ for kind in wanted)
            raise ConfigError(f"{path}: {key} = {value!r} is not a {names}")
    required = [key for key in ("site-name", "domain", "superlink") if key not in raw]
    if required:
        raise ConfigError(f"{path}: {', '.join(required)} must be set")
    if not raw.get("insecure") and "root-certificates" not in raw:
        raise ConfigError(
            f"{path}: set root-certificates (the federation's CA certificate), or insecure = true"
            " for a test without TLS"
        )
    if ("trusted-app-keys" in raw) == bool(raw.get("allow-unsigned-apps")):
        raise ConfigError(
            f"{path}: set trusted-app-keys (the keys whose signed apps this node runs), or"
            " allow-unsigned-apps = true for a trial that runs any app submitted; not both"
        )
    return NodeSettings(**{known[key].name: value for key, value in raw.items()}, source=path)


def _toml_types(hint: object) -> tuple[type, ...]:
    """The TOML value types a field accepts: its own, and int for a float."""
    kinds = [kind for kind in get_args(hint) or (hint,) if kind is not type(None)]
    return tuple(kinds + ([int] if float in kinds else []))


def check_node(settings: NodeSettings, registry: Registry) -> int:
    """What the first round would need at this site; returns the number of training samples."""
    where = f"{settings.source}"
    if not settings.data_root and not settings.sample_data:
        raise ConfigError(
            f"{where}: data-root is not set; a hospital's node trains on its own data (set"
            " sample-data = true only to try the federation on the domain's embedded sample)"
        )
    if settings.data_root and not Path(settings.data_root).exists():
        raise ConfigError(f"{where}: data-root {settings.data_root} does not exist")
    words = [f"domain={settings.domain}"]
    words += [f"data.root={settings.data_root}"] if settings.data_root else []
    try:
        config = compose(words, config_sources(registry))
        samples = len(build_domain(config, registry).index("train"))
    except FmcoreError as error:
        raise ConfigError(f"{where}: domain={settings.domain}, data-root: {error}") from error
    if samples == 0:
        raise ConfigError(
            f"{where}: data-root {settings.data_root} holds no training sample for domain"
            f" {settings.domain}"
        )
    if settings.state_dir:
        _check_writable(Path(settings.state_dir), f"{where}: state-dir")
    for key, value in (
        ("root-certificates", settings.root_certificates),
        ("auth-supernode-private-key", settings.auth_supernode_private_key),
        ("auth-supernode-public-key", settings.auth_supernode_public_key),
        ("trusted-app-keys", settings.trusted_app_keys),
    ):
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{where}: {key} {value} is not a file")
    if settings.trusted_app_keys is not None:
        try:
            read_trusted_keys(Path(settings.trusted_app_keys))
        except ConfigError as error:
            raise ConfigError(f"{where}: trusted-app-keys: {error}") from error
    return samples


def run_supernode(settings: NodeSettings) -> int:
    """Start the node's SuperNode (behind the signature gate when it has trusted app keys) and
    keep it running; returns its last exit code."""
    command = settings.supernode_command()
    if settings.allow_unsigned_apps:
        print("warning: allow-unsigned-apps = true: this node runs any app submitted", flush=True)
    print(f"starting {' '.join(command)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fmcore-node-") as scratch:
        return keep_running(
            command,
            settings.restart_delay,
            settings.max_delay,
            settings.max_restarts,
            env=settings.supernode_environment(Path(scratch)),
        )


def node_health(settings: NodeSettings, timeout: float = 5.0) -> str:
    """The SuperNode's answer on its gRPC health endpoint (``health-server-address``):
    ``SERVING`` while it runs, or why there is none (for a container or service health check)."""
    if settings.health_server_address is None:
        raise ConfigError(
            f"{settings.source}: set health-server-address to check the SuperNode's health"
        )
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(settings.health_server_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as error:
            return f"unreachable ({error.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _check_writable(directory: Path, what: str) -> None:
    probe = directory / ".fmcore-write-check"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{what} {directory} is not writable ({error})") from error


def keep_running(
    command: Sequence[str],
    restart_delay: float,
    max_delay: float,
    max_restarts: int | None,
    log=print,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``command`` until it exits 0 (or 2, a usage error, or is stopped by a signal);
    after another failure wait and start it again, the wait
    doubling from ``restart_delay`` up to ``max_delay`` (back to the start after a run of
    ``HEALTHY_RUN`` seconds or more). Returns the last exit code."""
    delay, restarts = restart_delay, 0
    while True:
        started = time.monotonic()
        code = _run_forwarding_signals(command, env)
        if code in (0, USAGE_ERROR) or code < 0:  # done, refused its flags, or stopped by a signal
            return code
        if max_restarts is not None and restarts >= max_restarts:
            log(f"{_now()} SuperNode exited with {code}; no restart left (max-restarts)")
            return code
        if time.monotonic() - started >= HEALTHY_RUN:
            delay = restart_delay
        log(f"{_now()} SuperNode exited with {code}; restarting in {delay:g} s")
        time.sleep(delay)
        delay, restarts = min(delay * 2, max_delay), restarts + 1


def _run_forwarding_signals(command: Sequence[str], env: Mapping[str, str] | None) -> int:
    """Run ``command``; a SIGTERM or SIGINT to this process is passed on to it (docker stop,
    systemd), so no SuperNode outlives ``fmcore node``. Returns its exit code."""
    child = subprocess.Popen(list(command), env=env)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
