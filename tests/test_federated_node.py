"""``fmcore node NODE.toml``: a hospital node's settings checked before it joins, the node config
Flower hands the ClientApp, and the SuperNode restarted with back-off."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import socket
import sys
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.common.config import parse_config_args

from fmcore.cli import main
from fmcore.config import compose, config_sources
from fmcore.federated.apps import deployed_site
from fmcore.federated.node import keep_running, read_node_settings
from fmcore.plugin_manager import registry

DIGITS_TRAIN = 1797 - len(range(0, 1797, 5))  # scikit-learn's digits, every 5th held out
TRIAL = {
    "site-name": "hospital-a",
    "domain": "digits",
    "superlink": "127.0.0.1:9092",
    "allow-unsigned-apps": True,
}


def node_file(tmp_path: Path, **settings: object) -> Path:
    lines = [f"{key} = {value!r}".replace("'", '"') for key, value in settings.items()]
    path = tmp_path / "node.toml"
    path.write_text("\n".join(lines).replace("True", "true") + "\n")
    return path


def test_checks_pass_on_usable_data_and_count_its_samples(tmp_path, capsys) -> None:
    path = node_file(tmp_path, **TRIAL, insecure=True, **{"sample-data": True})
    assert main(["node", str(path), "--check"]) == 0
    assert f"{DIGITS_TRAIN:,} training samples" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"insecure": True}, "data-root is not set"),
        ({"insecure": True, "data-root": "/no/such/slides"}, "data-root /no/such/slides"),
        ({"insecure": True, "sample-data": True, "state-dir": "FILE/state"}, "state-dir"),
        ({"insecure": True, "batch_size": 4}, "unknown key(s) batch_size"),
        ({}, "set root-certificates"),
        ({"insecure": "false"}, "insecure = 'false' is not a bool"),
        ({"insecure": True, "sample-data": True, "batch-size": "32"}, "batch-size = '32'"),
        ({"root-certificates": "/no/ca.crt", "sample-data": True}, "root-certificates"),
    ],
)
def test_a_bad_setting_exits_before_joining_and_is_named(tmp_path, capsys, settings, named):
    blocker = tmp_path / "FILE"
    blocker.write_text("a file where a directory should go")
    settings = {
        k: str(v).replace("FILE", str(blocker)) if k == "state-dir" else v
        for k, v in settings.items()
    }
    path = node_file(tmp_path, **TRIAL, **settings)
    assert main(["node", str(path), "--check"]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and named in error


def test_the_node_config_reaches_the_site_as_overrides(tmp_path) -> None:
    path = node_file(
        tmp_path,
        **TRIAL,
        insecure=True,
        **{"data-root": "/data/a b", "device": "cuda", "batch-size": 8, "state-dir": "/srv/s"},
    )
    command = read_node_settings(path).supernode_command()
    node = parse_config_args([command[command.index("--node-config") + 1]])
    context = Context(run_id=1, node_id=3, node_config=node, state=RecordDict(), run_config={})
    config = compose(["domain=digits"], config_sources(registry()))
    site = deployed_site(context, "fed-1", config)
    assert site.name == "hospital-a"
    assert site.overrides == (
        "domain=digits",
        "data.root=/data/a b",
        "trainer.device=cuda",
        "trainer.batch_size=8",
    )
    assert site.state_dir == Path("/srv/s/fed-1/hospital-a")


def test_a_stopped_supernode_restarts_with_growing_waits(tmp_path) -> None:
    runs = tmp_path / "runs"
    script = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]);"
        " n = len(p.read_text()) if p.exists() else 0; p.write_text('x' * (n + 1));"
        " sys.exit(0 if n == 2 else 3)"
    )
    said: list[str] = []
    command = [sys.executable, "-c", script, str(runs)]
    assert keep_running(command, 0.01, 0.02, None, said.append) == 0
    assert runs.read_text() == "xxx"  # two failures, then a clean exit
    assert [line.split(" ", 1)[1] for line in said] == [
        "SuperNode exited with 3; restarting in 0.01 s",
        "SuperNode exited with 3; restarting in 0.02 s",
    ]
    runs.unlink()
    always_failing = [sys.executable, "-c", "import sys; sys.exit(7)"]
    assert keep_running(always_failing, 0.01, 0.02, 1, said.append) == 7
    assert said[-1].endswith("SuperNode exited with 7; no restart left (max-restarts)")
    refused_flags = [sys.executable, "-c", "import sys; sys.exit(2)"]  # a usage error
    count = len(said)
    assert keep_running(refused_flags, 0.01, 0.02, None, said.append) == 2
    assert len(said) == count  # not restarted


def test_health_needs_an_address_and_reports_a_silent_endpoint(tmp_path, capsys) -> None:
    path = node_file(tmp_path, **TRIAL, insecure=True)
    assert main(["node", str(path), "--health"]) == 2
    assert "set health-server-address" in capsys.readouterr().err
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    path = node_file(
        tmp_path, **TRIAL, insecure=True, **{"health-server-address": f"127.0.0.1:{closed}"}
    )
    assert main(["node", str(path), "--health"]) == 1
    assert "unreachable (UNAVAILABLE)" in capsys.readouterr().out


def test_the_service_unit_and_the_container_run_node_commands_that_work(tmp_path) -> None:
    """deploy/node's systemd unit and Dockerfile (not built here) start and probe the node with
    command lines fmcore accepts: run against a node file, the checks pass."""
    deploy = Path(__file__).resolve().parents[1] / "deploy" / "node"
    unit = configparser.ConfigParser(interpolation=None)
    unit.read(deploy / "fmcore-node.service")
    exec_start = shlex.split(unit["Service"]["ExecStart"])
    dockerfile = (deploy / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))
    health = json.loads(re.search(r"^\s+CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert Path(exec_start[0]).name == entrypoint[0] == health[0] == "fmcore"
    assert health[1:] == [*entrypoint[1:], "--health"]
    settings = node_file(tmp_path, **TRIAL, insecure=True, **{"sample-data": True})
    for command in (exec_start[1:], entrypoint[1:]):
        words = [str(settings) if word == "/etc/fmcore/node.toml" else word for word in command]
        assert main([*words, "--check"]) == 0
