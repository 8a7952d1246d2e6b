"""``fmcore link``: the coordinator's SuperLink with the hospitals' port serving the Fleet API only,
and (with trusted app keys) ServerApps only from signed apps.

flwr 1.41/1.42 serve the Fleet API (SuperNodes), the Control API (``flwr run``, ``flwr
supernode register``) and the ServerApps' runtime API from one HTTP port (``--host``/``--port``;
``--control-api-address`` is deprecated and ignored). Whoever reaches that port can submit an
app. ``fmcore link`` runs Flower's own ``flower-superlink`` in this process and serves its
application on two sockets: the control address (everything, meant for loopback or an admin
network) and the fleet address, where every request but the Fleet API's and the health check
is refused before it reaches Flower.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fmcore.errors import ConfigError
from fmcore.federated.app_gate import write_gate
from fmcore.federated.app_signing import read_trusted_keys

#: What hospitals' SuperNodes call (flwr 1.41/1.42 routers) and the HTTP health check.
FLEET_PREFIX = "/v1/fleet/"
HEALTH_PATH = "/health"
#: flower-superlink flags that fmcore link sets itself.
OWN_FLAGS = ("--host", "--port", "--fleet-api-address", "--control-api-address")


def parse_address(address: str, what: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); a bad one named by ``what``."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{what} {address!r} is not host:port")
    return host.strip("[]"), int(port)


class FleetPortFilter:
    """ASGI middleware: a request that arrived on ``fleet_port`` reaches the app only for the
    Fleet API or the health check; anything else there is answered 403."""

    def __init__(self, app: Callable[..., Any], fleet_port: int) -> None:
        self.app = app
        self.fleet_port = fleet_port

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket") and self._refused(scope):
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send(
                {"type": "http.response.body", "body": b"this port serves the Fleet API only"}
            )
            return
        await self.app(scope, receive, send)

    def _refused(self, scope: dict) -> bool:
        server = scope.get("server") or (None, None)
        path = scope["path"]
        fleet = path.startswith(FLEET_PREFIX) or path == HEALTH_PATH
        return server[1] == self.fleet_port and not fleet


def _listening(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port} ({error})") from error


def serve_on_two_sockets(fleet: tuple[str, int]) -> Callable[..., None]:
    """A stand-in for ``uvicorn.run`` as flower-superlink calls it: the same server, on its own
    host/port (the control address) and on ``fleet``, behind :class:`FleetPortFilter`."""
    import uvicorn

    def run(app: Callable[..., Any], host: str, port: int, **options: Any) -> None:
        config = uvicorn.Config(FleetPortFilter(app, fleet[1]), host=host, port=port, **options)
        sockets = [_listening(host, port), _listening(*fleet)]
        uvicorn.Server(config).run(sockets=sockets)

    return run


def run_link(
    control_address: str,
    fleet_address: str,
    superlink_flags: Sequence[str],
    trusted_app_keys: Path | None,
) -> None:
    """Run flower-superlink with ``superlink_flags`` (TLS, node authentication, database ...)
    until it stops; ServerApps pass the signature gate when ``trusted_app_keys`` is given
    (without, any app submitted runs)."""
    control, fleet = (
        parse_address(control_address, "--control-address"),
        parse_address(fleet_address, "--fleet-address"),
    )
    if control[1] == fleet[1]:
        raise ConfigError("--control-address and --fleet-address need different ports")
    taken = [flag for flag in superlink_flags if flag.split("=")[0] in OWN_FLAGS]
    if taken:
        raise ConfigError(
            f"fmcore link sets {', '.join(taken)} itself: use --control-address/--fleet-address"
        )
    if trusted_app_keys is None:
        print("warning: --allow-unsigned-apps: the SuperLink runs any app submitted", flush=True)
    else:
        read_trusted_keys(trusted_app_keys)  # a bad file stops the start, not the first app
    print(
        f"SuperLink: Fleet API only on {fleet_address} (hospitals), Control API on"
        f" {control_address} (flwr)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="fmcore-link-") as scratch:
        path = [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
        if trusted_app_keys is not None:
            path.insert(0, str(write_gate(Path(scratch) / "bin", trusted_app_keys)))
        os.environ["PATH"] = os.pathsep.join(path)  # the SuperExec and ServerApps it starts
        superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")
        superlink.uvicorn = SimpleNamespace(run=serve_on_two_sockets(fleet))
        host, port = control[0], str(control[1])
        sys.argv = ["flower-superlink", *superlink_flags, "--host", host, "--port", port]
        superlink.flower_superlink()
