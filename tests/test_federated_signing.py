"""Signed apps: ``fmcore federate-sign`` signs the bundle ``flwr run`` sends, and a node's gate
installs a bundle only when a trusted key signed exactly those files (the whole federation,
refusing a foreign app at a node, runs in test_federated_deploy.py)."""

from __future__ import annotations

import importlib
import io
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import SMALL_RUN, ed25519_key
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, RecordDict
from flwr.cli.build import build_fab_from_disk

from fmcore.cli import main
from fmcore.errors import ConfigError
from fmcore.federated.app_gate import REFUSED_KIND, run_gated, write_gate
from fmcore.federated.app_signing import (
    SIGNATURE_FILE,
    AppRefused,
    bundle_digest,
    check_run_config,
    read_trusted_keys,
    record_signed_config,
    sign_app,
    stale_signature,
    verify_bundle,
)
from fmcore.federated.apps import _run_words as run_words
from fmcore.federated.deploy import write_app
from fmcore.federated.node import read_node_settings

WORDS = [*SMALL_RUN, "federated.sites=2", "federated.rounds=2"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("keys")
    return {name: ed25519_key(directory, name) for name in ("consortium", "stranger")}


def trusted_file(directory: Path, **entries: str) -> Path:
    path = directory / "trusted.yaml"
    path.write_text("".join(f'{key_id}: "{public}"\n' for key_id, public in entries.items()))
    return path


def signed_app(directory: Path, key: Path, key_id: str = "consortium") -> Path:
    app = directory / "app"
    write_app(app, WORDS)
    assert main(["federate-sign", str(app), "--key", str(key), "--key-id", key_id]) == 0
    return app


def test_a_signed_app_passes_and_any_change_or_other_key_is_refused(tmp_path, keys) -> None:
    (consortium, consortium_public), (stranger, stranger_public) = keys.values()
    trusted = read_trusted_keys(trusted_file(tmp_path, consortium=consortium_public))
    app = signed_app(tmp_path, consortium)
    assert stale_signature(app) is None
    assert verify_bundle(build_fab_from_disk(app), trusted) == "consortium"

    (app / "evil.py").write_text("import os\n")  # a file added after signing
    assert "changed after" in stale_signature(app)
    with pytest.raises(AppRefused, match="files changed after 'consortium' signed it"):
        verify_bundle(build_fab_from_disk(app), trusted)
    (app / "evil.py").unlink()
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("rounds=2", "rounds=3"))
    with pytest.raises(AppRefused, match="files changed after"):
        verify_bundle(build_fab_from_disk(app), trusted)

    # new words rewrite the app and drop the signature that covered the old ones
    write_app(app, [*WORDS, "federated.local_steps=3"])
    assert not (app / SIGNATURE_FILE).exists()
    assert "is not signed" in stale_signature(app)
    with pytest.raises(AppRefused, match="not signed"):
        verify_bundle(build_fab_from_disk(app), trusted)

    by_stranger = signed_app(tmp_path / "other", stranger, key_id="stranger")
    with pytest.raises(AppRefused, match="signed by 'stranger', which this node does not trust"):
        verify_bundle(build_fab_from_disk(by_stranger), trusted)
    # a stranger claiming the consortium's id: the signature does not verify with its key
    posing = signed_app(tmp_path / "posing", stranger, key_id="consortium")
    with pytest.raises(AppRefused, match="does not verify with 'consortium'"):
        verify_bundle(build_fab_from_disk(posing), trusted)
    assert (
        verify_bundle(
            build_fab_from_disk(by_stranger),
            read_trusted_keys(trusted_file(tmp_path, stranger=stranger_public)),
        )
        == "stranger"
    )


def test_the_gate_installs_only_signed_bundles(tmp_path, keys, monkeypatch) -> None:
    """Behind the gate every Flower runner's install_from_fab (ClientApp, ServerApp, agent app,
    simulation) is Flower's own behind the check: a refused bundle leaves nothing unpacked."""
    flower_install, runner, server_runner, agent_runner, simulation = map(
        importlib.import_module,
        (
            "flwr.cli.install",
            "flwr.supernode.runtime.run_clientapp",
            "flwr.superlink.runtime.run_serverapp",
            "flwr.supercore.task_process.agent.run_agentapp",
            "flwr.simulation.app",
        ),
    )

    (consortium, consortium_public), (stranger, _) = keys.values()
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    original = flower_install.install_from_fab
    for module in list(sys.modules.values()):  # restored after the test
        if getattr(module, "install_from_fab", None) is original:
            monkeypatch.setattr(module, "install_from_fab", original)
    # run_gated gates the installs, then starts Flower's entry point: stop it there (no
    # SuperNode to talk to) and keep the gated installs in place
    monkeypatch.setattr("flwr.supernode.cli.flwr_clientapp", lambda: None)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    run_gated(
        "flwr-clientapp", trusted_file(tmp_path, consortium=consortium_public), "flwr-clientapp"
    )
    for module in (flower_install, runner, server_runner, agent_runner, simulation):
        assert module.install_from_fab is not original, module.__name__

    with pytest.raises(AppRefused, match="signed by 'stranger'"):
        runner.install_from_fab(
            build_fab_from_disk(signed_app(tmp_path / "s", stranger, "stranger")), skip_prompt=True
        )
    assert not any((tmp_path / "flwr-home").rglob("*.toml"))
    installed = runner.install_from_fab(
        build_fab_from_disk(signed_app(tmp_path, consortium)), skip_prompt=True
    )
    assert (Path(installed) / "pyproject.toml").is_file()
    assert (Path(installed) / SIGNATURE_FILE).is_file()


def test_only_the_machines_kind_of_app_process_runs(tmp_path) -> None:
    """The gate holds a command for every app process Flower's SuperExec may start; at a node
    all but flwr-clientapp refuse to run (here flwr-agentapp, which would install and import
    an agent app's code)."""
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    gate = write_gate(tmp_path / "with space", None, "flwr-clientapp")
    assert sorted(p.name for p in gate.iterdir()) == sorted(TASK_TYPE_TO_COMMAND.values())
    refused = subprocess.run(
        [str(gate / "flwr-agentapp"), "--token", "x"], capture_output=True, text=True
    )
    assert refused.returncode == REFUSED_KIND
    assert "flwr-agentapp does not run on this machine (only flwr-clientapp)" in refused.stderr
    with pytest.raises(ConfigError, match="not one of Flower's app commands"):
        write_gate(tmp_path, None, "flwr-mystery")


def test_a_signed_apps_run_config_cannot_be_overridden(tmp_path, keys, monkeypatch) -> None:
    """flwr run --run-config could change a signed app's words: behind the gate fmcore's apps
    run only with the config the signature covers."""
    import fmcore.federated.app_signing as signing

    monkeypatch.setattr(signing, "_signed_config", None)
    app = signed_app(tmp_path, keys["consortium"][0])
    words = shlex.join(["federated=fedavg", *WORDS])
    check_run_config({"overrides": "anything"})  # no gate ran in this process: nothing to check
    record_signed_config(build_fab_from_disk(app))
    check_run_config({"overrides": words})
    with pytest.raises(AppRefused, match="differs from the signed app's in overrides"):
        check_run_config({"overrides": words + " federated.rounds=99"})
    context = Context(1, 1, {}, RecordDict(), {"overrides": "federated.rounds=99"})
    with pytest.raises(AppRefused, match="differs"):
        run_words(context)


def test_a_bundle_with_ambiguous_file_names_is_refused(tmp_path, keys) -> None:
    """A name holding a tab and a newline could pose as two signed files' lines; names that
    unpack elsewhere, or twice, are refused too; and a signature that flwr's packing would drop
    is caught when signing."""
    for name in ("pkg/a.py\tdeadbeef\npkg/b.py", "../escape.py", "/etc/passwd", "a/./b.py"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("pyproject.toml", "[project]\n")
            archive.writestr(name, "x")
        with pytest.raises(AppRefused, match="holds a file named"):
            bundle_digest(buffer.getvalue())
    app = tmp_path / "app"
    write_app(app, WORDS)
    (app / ".gitignore").write_text(f"{SIGNATURE_FILE}\n")
    with pytest.raises(
        ConfigError, match="the signed bundle does not verify: the app is not signed"
    ):
        sign_app(app, keys["consortium"][0], "consortium")
    assert not (app / SIGNATURE_FILE).exists()


def test_a_node_needs_trusted_keys_or_an_explicit_trial(tmp_path, keys) -> None:
    base = 'site-name = "a"\ndomain = "digits"\nsuperlink = "127.0.0.1:9092"\ninsecure = true\n'
    path = tmp_path / "node.toml"
    for extra in ("", 'allow-unsigned-apps = true\ntrusted-app-keys = "t.yaml"\n'):
        path.write_text(base + extra)
        with pytest.raises(ConfigError, match="set trusted-app-keys"):
            read_node_settings(path)
    ecdsa = ec.generate_private_key(ec.SECP384R1()).public_key()
    line = ecdsa.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    trusted = trusted_file(tmp_path, hospital=line.decode())
    path.write_text(base + f'trusted-app-keys = "{trusted}"\nsample-data = true\n')
    assert main(["node", str(path), "--check"]) == 2
    with pytest.raises(ConfigError, match="hospital is not an Ed25519"):
        read_trusted_keys(trusted)
    trusted_file(tmp_path, consortium=keys["consortium"][1])
    assert main(["node", str(path), "--check"]) == 0


@pytest.mark.parametrize(
    ("words", "named"),
    [
        (["--fleet-address", "127.0.0.1:9000", "--control-address", "127.0.0.1:9000"], "ports"),
        (["--fleet-address", "9000"], "--fleet-address '9000' is not host:port"),
        (["--", "--insecure", "--port", "8000"], "fmcore link sets --port itself"),
    ],
)
def test_link_refuses_one_port_for_both_apis_and_flags_it_sets(words, named, capsys) -> None:
    assert main(["link", "--allow-unsigned-apps", *words]) == 2
    assert named in capsys.readouterr().err
