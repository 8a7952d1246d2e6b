"""Signed federation apps: the consortium signs an app directory, a hospital's node runs only apps
signed by a key it trusts.

flwr 1.41/1.42 verify app signatures (``flower-supernode --trusted-entities``) only for apps
fetched from Flower Hub: an app submitted from a directory (``flwr run DIR``, fmcore's
deployment) carries no verification, so a node with trusted entities refuses every such app,
fmcore's included. fmcore therefore signs the app itself: ``fmcore federate-sign DIR --key KEY``
builds the app's bundle (FAB) exactly as ``flwr run`` does, hashes every file in it and signs the
hash with an Ed25519 key (``ssh-keygen -t ed25519``); the signature travels inside the bundle as
``fmcore-signature.json``. The node checks it before the bundle is installed or any of its code
imported (:mod:`.app_gate`). Trusted keys are listed in Flower's trusted-entities format: a YAML
mapping of key ids to OpenSSH public keys.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fmcore.errors import ConfigError, FmcoreError
from fmcore.io import atomic_write_text

SIGNATURE_FILE = "fmcore-signature.json"
#: flwr's own file list inside a bundle (it lists the signature file too, so it is not signed).
FLOWER_MANIFEST = ".info/CONTENT"
SIGNATURE_SCHEME = "fmcore-app-signature-v1"


class AppRefused(FmcoreError):
    """An app bundle this node must not run; the message says why."""


def app_bundle(app_dir: Path) -> bytes:
    """The bundle ``flwr run app_dir`` sends: flwr's own packing, so the hash covers what runs."""
    from flwr.cli.build import build_fab_from_disk

    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{app_dir} is not an app directory (no pyproject.toml)")
    return build_fab_from_disk(app_dir)


def bundle_digest(bundle: bytes) -> str:
    """SHA-256 over every file of the bundle but flwr's manifest and the signature: one line of
    path and content hash per file, sorted by path."""
    try:
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            lines = sorted(
                f"{name}\t{hashlib.sha256(archive.read(name)).hexdigest()}\n"
                for name in archive.namelist()
                if name not in (FLOWER_MANIFEST, SIGNATURE_FILE)
            )
    except zipfile.BadZipFile as error:
        raise AppRefused(f"the app bundle is not a zip archive ({error})") from error
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _signed_message(digest: str, signed_at: int) -> bytes:
    return f"{SIGNATURE_SCHEME}\n{digest}\n{signed_at}".encode()


def sign_app(app_dir: Path, private_key: Path, key_id: str) -> Path:
    """Sign ``app_dir`` with the Ed25519 OpenSSH key at ``private_key``; writes and returns
    ``app_dir/fmcore-signature.json``. Any change to the app's files afterwards voids it."""
    try:
        key = load_ssh_private_key(private_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(
            f"--key {private_key}: not an unencrypted OpenSSH private key ({error})"
        ) from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"--key {private_key}: an Ed25519 key is needed (ssh-keygen -t ed25519)")
    digest = bundle_digest(app_bundle(app_dir))
    signed_at = int(time.time())
    signature = key.sign(_signed_message(digest, signed_at))
    record = {
        "scheme": SIGNATURE_SCHEME,
        "key-id": key_id,
        "signed-at": signed_at,
        "digest": digest,
        "signature": base64.b64encode(signature).decode(),
    }
    target = app_dir / SIGNATURE_FILE
    atomic_write_text(target, json.dumps(record, indent=2) + "\n")
    return target


def stale_signature(app_dir: Path) -> str | None:
    """Why ``app_dir``'s signature cannot pass a node's check on the files as they are now
    (unsigned, or signed before they changed); None when it is current."""
    signature = app_dir / SIGNATURE_FILE
    if not signature.is_file():
        return f"{app_dir} is not signed: nodes with trusted-app-keys refuse it"
    try:
        signed_digest = json.loads(signature.read_text()).get("digest")
    except (OSError, ValueError, AttributeError) as error:
        return f"{signature} is unreadable ({error})"
    if signed_digest != bundle_digest(app_bundle(app_dir)):
        return f"{app_dir}'s files changed after {signature.name} was written: sign it again"
    return None


def read_trusted_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """The YAML file at ``path``: key id -> ``ssh-ed25519 AAAA...`` public key (Flower's
    trusted-entities format); each key is checked, an unusable one named."""
    try:
        entries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"trusted keys {path}: not a readable YAML file ({error})") from error
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"trusted keys {path}: expected a mapping of key ids to public keys")
    keys = {}
    for key_id, text in entries.items():
        try:
            key = load_ssh_public_key(str(text).encode())
        except (ValueError, TypeError) as error:
            raise ConfigError(f"trusted keys {path}: {key_id} is not an OpenSSH key") from error
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"trusted keys {path}: {key_id} is not an Ed25519 (ssh-ed25519) key")
        keys[str(key_id)] = key
    return keys


def verify_bundle(bundle: bytes, trusted: dict[str, Ed25519PublicKey]) -> str:
    """The id of the trusted key that signed ``bundle``; :class:`AppRefused` saying why not."""
    digest = bundle_digest(bundle)
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        if SIGNATURE_FILE not in archive.namelist():
            raise AppRefused(f"the app is not signed (its bundle holds no {SIGNATURE_FILE})")
        try:
            record = json.loads(archive.read(SIGNATURE_FILE))
            key_id, signed_at = str(record["key-id"]), int(record["signed-at"])
            signature = base64.b64decode(record["signature"], validate=True)
        except (ValueError, KeyError, TypeError) as error:
            raise AppRefused(f"the app's {SIGNATURE_FILE} is unreadable ({error!r})") from error
    if key_id not in trusted:
        raise AppRefused(
            f"the app is signed by {key_id!r}, which this node does not trust"
            f" (trusted: {', '.join(sorted(trusted))})"
        )
    if record.get("digest") != digest:
        raise AppRefused(f"the app's files changed after {key_id!r} signed it")
    try:
        trusted[key_id].verify(signature, _signed_message(digest, signed_at))
    except InvalidSignature as error:
        raise AppRefused(f"the app's signature does not verify with {key_id!r}'s key") from error
    return key_id
