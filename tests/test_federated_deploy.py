"""Federated pretraining deployed as in a hospital network: a real SuperLink, one SuperNode per
site, the app written by ``fmcore federate-app`` and started with ``flwr run``, on loopback
(processes from tests/loopback.py: their logs are printed when a test fails).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shlex
import ssl
import sys
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from conftest import SMALL_RUN, ed25519_key, fmcore
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flwr.cli.config_utils import load_and_validate
from loopback import (
    BIN,
    CONNECTION,
    SITES,
    START_TIMEOUT,
    Cluster,
    cluster,
    free_port,
    start_sites,
    write_connection,
)

from fmcore.errors import ConfigError
from fmcore.federated.app_signing import SIGNATURE_FILE
from fmcore.federated.deploy import write_app

FEDERATION = [
    *SMALL_RUN,
    "trainer.progress=none",
    "federated.sites=2",
    "federated.rounds=2",
    "federated.local_steps=1",
    "federated.connect_timeout=120",
    "federated.round_timeout=300",
]


def run_federation(
    running: Cluster,
    server_dir: Path,
    states: dict[str, Path],
    signing_key: Path | None = None,
    rounds: int = 2,
) -> None:
    """Write the app with fmcore (signed with ``signing_key``), ``flwr run`` it for ``rounds``
    rounds, check the server's and the sites' outputs."""
    app = running.root / "app"
    words = [w for w in FEDERATION if not w.startswith("federated.rounds=")]
    words += [f"federated.rounds={rounds}", f"run.dir={server_dir}"]
    fmcore("federate-app", str(app), *words, cwd=running.root)
    if signing_key is not None:
        fmcore("federate-sign", str(app), "--key", str(signing_key), cwd=running.root)
    result = running.federate_run(app)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": finished:completed")
    for server_round in range(1, rounds + 1):
        assert (server_dir / "rounds" / f"round_{server_round:04d}.safetensors").is_file(), (
            result.stdout + result.stderr
        )
    log = [json.loads(line) for line in (server_dir / "rounds.jsonl").read_text().splitlines()]
    assert [entry["round"] for entry in log] == list(range(1, rounds + 1))
    for entry in log:
        assert set(entry["bytes_up"]) == set(SITES)
        assert entry["contributors"] == 2 and not entry["failures"]
    federation = (server_dir / "federation.id").read_text().strip()
    for site, state in states.items():
        assert any((state / federation / site / "checkpoints").iterdir())


def test_the_written_app_is_one_flwr_accepts(tmp_path: Path) -> None:
    write_app(tmp_path / "app", [*FEDERATION, "run.dir=/srv/federation one"])
    config, _ = load_and_validate(tmp_path / "app" / "pyproject.toml", check_module=True)
    words = shlex.split(config["tool"]["flwr"]["app"]["config"]["overrides"])
    assert words == ["federated=fedavg", *FEDERATION, "run.dir=/srv/federation one"]
    # the app asks for the flwr range fmcore's federated extra pins, which the installed flwr
    # (the one these tests ran against) lies in
    (flwr,) = [d for d in config["project"]["dependencies"] if d.startswith("flwr")]
    assert flwr == "flwr<1.43,>=1.41"
    installed = tuple(int(part) for part in metadata.version("flwr").split(".")[:2])
    assert (1, 41) <= installed < (1, 43)


def test_an_unknown_word_or_a_foreign_pyproject_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid choices"):
        write_app(tmp_path / "app", ["domain=nowhere"])
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "mine"\n')
    with pytest.raises(ConfigError, match="not an fmcore federation app"):
        write_app(tmp_path, FEDERATION)
    assert "mine" in (tmp_path / "pyproject.toml").read_text()


@pytest.mark.slow
def test_superlink_and_two_supernodes_run_a_federation(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with cluster(tmp_path) as running:
        running.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
        )
        trial = {"insecure": True, "allow-unsigned-apps": True}
        states = start_sites(running, address, ["--insecure"], {SITES[0]: trial})
        write_connection(running, address, {"insecure": True})
        running.await_port("superlink", port)
        # one round here (the TLS test below runs two): the suite's time budget
        run_federation(running, tmp_path / "server", states, rounds=1)
        health = fmcore("node", str(tmp_path / f"{SITES[0]}.toml"), "--health", cwd=tmp_path)
        assert health.stdout.strip().endswith(": SERVING")
        # a federation that fails (a third site never connects) makes federate-run exit 1
        failing = tmp_path / "failing-app"
        waits_for_three = [
            "federated.sites=3",
            "federated.min_sites=3",
            "federated.connect_timeout=2",
        ]
        words = [*FEDERATION, *waits_for_three, f"run.dir={tmp_path / 'failing'}"]
        fmcore("federate-app", str(failing), *words, cwd=tmp_path)
        failed = running.federate_run(failing)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert failed.stdout.strip().endswith(": finished:failed")


def certificate_authority(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signs for 127.0.0.1 and localhost: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool, names=()):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = certificate("fmcore test CA", ca_key, "fmcore test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP384R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = certificate("127.0.0.1", server_key, "fmcore test CA", ca_key, False, names)
    paths = directory / "ca.crt", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def node_key(directory: Path, site: str) -> tuple[Path, Path]:
    """The site's SuperNode key pair in OpenSSH format (as ``ssh-keygen -t ecdsa -b 384``):
    (private, public)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = directory / f"{site}.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = directory / f"{site}.key.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public


def write_foreign_app(directory: Path, marker: Path, replies: Path) -> Path:
    """An app that is not fmcore's: its ClientApp would write ``marker`` when imported or
    called at a node; its ServerApp queries two nodes and writes their error reasons."""
    package = directory / "foreign"
    package.mkdir(parents=True)
    (directory / "pyproject.toml").write_text(
        '[project]\nname = "foreign"\nversion = "1.0.0"\ndescription = "not fmcore"\n'
        'license = "Apache-2.0"\ndependencies = ["flwr>=1.41"]\n\n'
        '[tool.flwr.app]\npublisher = "stranger"\n\n[tool.flwr.app.components]\n'
        'serverapp = "foreign.server:app"\nclientapp = "foreign.client:app"\n\n'
        "[tool.flwr.app.config]\n"
    )
    (package / "__init__.py").write_text("")
    (package / "client.py").write_text(
        "from pathlib import Path\n"
        "from flwr.app import Message, RecordDict\n"
        "from flwr.clientapp import ClientApp\n"
        f"Path({str(marker)!r}).write_text('imported at a node')\n"
        "app = ClientApp()\n\n"
        "@app.query()\n"
        "def query(message, context):\n"
        f"    Path({str(marker)!r}).write_text(str(context.node_config))\n"
        "    return Message(RecordDict(), reply_to=message)\n"
    )
    (package / "server.py").write_text(
        "import time\n"
        "from pathlib import Path\n"
        "from flwr.app import Message, MessageType, RecordDict\n"
        "from flwr.serverapp import ServerApp\n"
        "app = ServerApp()\n\n"
        "@app.main()\n"
        "def main(grid, context):\n"
        "    while len(nodes := list(grid.get_node_ids())) < 2:\n"
        "        time.sleep(0.5)\n"
        "    ask = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)\n"
        "           for n in nodes]\n"
        "    replies = grid.send_and_receive(ask, timeout=120)\n"
        "    reasons = [r.error.reason if r.has_error() else 'ran' for r in replies]\n"
        f"    Path({str(replies)!r}).write_text('\\n'.join(reasons))\n"
    )
    return directory


@pytest.mark.slow
def test_tls_node_authentication_and_signed_apps_only(tmp_path: Path) -> None:
    """A coordinator started with ``fmcore link`` (TLS, node authentication, the Control API on
    its own port) and hospitals started with ``fmcore node`` (a registered node key, the
    consortium's app key trusted) run the signed fmcore app for two rounds. An app signed by a
    key the hospitals do not trust runs its ServerApp at the coordinator but none of its code at
    a node; an unsigned app does not run at all; an unregistered node is turned away."""
    ca, cert, key = certificate_authority(tmp_path)
    consortium, consortium_public = ed25519_key(tmp_path, "consortium")
    stranger, stranger_public = ed25519_key(tmp_path, "stranger")
    trusted = tmp_path / "trusted-app-keys.yaml"
    trusted.write_text(f'consortium: "{consortium_public}"\n')
    coordinator_trusts = tmp_path / "coordinator-app-keys.yaml"
    coordinator_trusts.write_text(trusted.read_text() + f'stranger: "{stranger_public}"\n')
    control_port, fleet_port = free_port(), free_port()
    fleet = f"127.0.0.1:{fleet_port}"
    with cluster(tmp_path) as running:
        running.start(
            "superlink",
            [
                *(sys.executable, "-m", "fmcore", "link", "--fleet-address", fleet),
                *("--control-address", f"127.0.0.1:{control_port}"),
                *("--trusted-app-keys", str(coordinator_trusts), "--"),
                *("--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert)),
                *("--ssl-keyfile", str(key), "--enable-supernode-auth"),
                "--disable-runtime-dependency-installation",
            ],
        )
        write_connection(running, f"127.0.0.1:{control_port}", {"root-certificates": str(ca)})
        running.await_port("superlink", control_port)
        tls = ssl.create_default_context(cafile=str(ca))
        on_fleet_port = httpx.post(f"https://{fleet}/v1/control/list-runs", verify=tls, json={})
        assert on_fleet_port.status_code == 403
        assert on_fleet_port.text == "this port serves the Fleet API only"
        assert httpx.get(f"https://{fleet}/health", verify=tls).status_code == 200
        hospitals = {}
        for site in SITES:
            private, public = node_key(tmp_path, site)
            registered = running.cli("supernode", "register", str(public), CONNECTION)
            assert registered.returncode == 0, registered.stdout + registered.stderr
            hospitals[site] = {
                "root-certificates": str(ca),
                "auth-supernode-private-key": str(private),
                "trusted-app-keys": str(trusted),
            }
        states = start_sites(running, fleet, [], hospitals)
        unregistered, _ = node_key(tmp_path, "intruder")
        running.start(
            "intruder",
            [
                str(BIN / "flower-supernode"),
                *("--root-certificates", str(ca)),
                *("--auth-supernode-private-key", str(unregistered)),
                *("--superlink", fleet, "--port", str(free_port())),
                *("--node-config", 'site-name="intruder"'),
            ],
        )
        run_federation(running, tmp_path / "server", states, signing_key=consortium)
        assert running.processes["intruder"].wait(timeout=START_TIMEOUT) != 0
        assert "Failed to activate SuperNode" in running.log("intruder").read_text()

        marker, replies = tmp_path / "foreign-ran-here", tmp_path / "foreign-replies"
        foreign = write_foreign_app(tmp_path / "foreign-app", marker, replies)
        fmcore("federate-sign", str(foreign), "--key", str(stranger), cwd=tmp_path)
        running.federate_run(foreign)
        refusal = (
            "<class 'fmcore.federated.app_signing.AppRefused'>:<'the app is signed by"
            " 'stranger', which this node does not trust (trusted: consortium)'>"
        )
        assert replies.read_text().splitlines() == [refusal, refusal]
        assert not marker.exists()
        for site in SITES:
            assert "AppRefused: the app is signed by 'stranger'" in running.log(site).read_text()

        replies.unlink()
        (foreign / SIGNATURE_FILE).unlink()
        unsigned = running.federate_run(foreign)
        assert unsigned.returncode == 1 and unsigned.stdout.strip().endswith(": finished:failed")
        assert not replies.exists() and not marker.exists()
        assert "AppRefused: the app is not signed" in unsigned.stdout  # the ServerApp's log
