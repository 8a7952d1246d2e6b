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
from fmcore.federated.app_gate import gated_path

#: What hospitals' SuperNodes call (flwr 1.41/1.42 routers) and the HTTP health check.
FLEET_PREFIX = "/v1/fleet/"
HEALTH_PATH = "/health"
REFUSAL = b"this port serves the Fleet API only"
#: flower-superlink flags that fmcore link sets itself, and flags that would take ServerApps
#: out of its gate (no SuperExec with ``--isolation process``; simulations).
OWN_FLAGS = ("--host", "--port", "--fleet-api-address", "--control-api-address")
REFUSED_FLAGS = ("--isolation", "--simulation")
#: Starts an unfiltered gRPC Control API on flwr's default address when set to 1.
GRPC_CONTROL_API_SWITCH = "FLWR_INTERNAL_GRPC_CONTROL_API"


def parse_address(address: str, what: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); a bad one named by ``what``."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {address!r} is not host:port (a port from 1 to 65535)")
    return host.strip("[]"), int(port)


class FleetPortFilter:
    """ASGI middleware: a request reaches the app unrestricted only when it arrived on
    ``control_port``; anywhere else (the fleet port) only the Fleet API and the health check
    are served, and everything else is answered 403 (a websocket is closed)."""

    def __init__(self, app: Callable[..., Any], control_port: int) -> None:
        self.app = app
        self.control_port = control_port

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "websocket" and self._refused(scope):
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http" and self._refused(scope):
            start = {"type": "http.response.start", "status": 403}
            await send({**start, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": REFUSAL})
            return
        await self.app(scope, receive, send)

    def _refused(self, scope: dict) -> bool:
        server = scope.get("server") or (None, None)
        path = scope["path"]
        fleet = path.startswith(FLEET_PREFIX) or path == HEALTH_PATH
        return server[1] != self.control_port and not fleet


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
        config = uvicorn.Config(FleetPortFilter(app, port), host=host, port=port, **options)
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
    flags = [flag.split("=")[0] for flag in superlink_flags]
    taken = [flag for flag in flags if flag in OWN_FLAGS]
    if taken:
        raise ConfigError(
            f"fmcore link sets {', '.join(taken)} itself: use --control-address/--fleet-address"
        )
    refused = [flag for flag in flags if flag in REFUSED_FLAGS]
    if refused:
        raise ConfigError(
            f"fmcore link does not take {', '.join(refused)}: its ServerApps run in the"
            " SuperLink's own SuperExec, behind the app gate"
        )
    if trusted_app_keys is None:
        print("warning: --allow-unsigned-apps: the SuperLink runs any app submitted", flush=True)
    print(
        f"SuperLink: Fleet API only on {fleet_address} (hospitals), Control API on"
        f" {control_address} (flwr)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="fmcore-link-") as scratch:
        gate = Path(scratch) / "bin"
        # the SuperExec and the ServerApps it starts find Flower's app commands on PATH
        os.environ["PATH"] = gated_path(gate, trusted_app_keys, "flwr-serverapp")
        os.environ.pop(GRPC_CONTROL_API_SWITCH, None)
        superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")
        superlink.uvicorn = SimpleNamespace(run=serve_on_two_sockets(fleet))
        host, port = control[0], str(control[1])
        sys.argv = ["flower-superlink", *superlink_flags, "--host", host, "--port", port]
        superlink.flower_superlink()
