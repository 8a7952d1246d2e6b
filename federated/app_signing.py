"""Signed federation apps: the consortium signs an app directory, a hospital's node runs only apps
signed by a key it trusts, with the run config the signature covers.

flwr 1.41/1.42 verify app signatures (``flower-supernode --trusted-entities``) only for apps
fetched from Flower Hub: an app submitted from a directory (``flwr run DIR``, fmcore's
deployment) carries no verification, so a node with trusted entities refuses every such app,
fmcore's included. fmcore therefore signs the app itself: ``fmcore federate-sign DIR --key KEY``
builds the app's bundle (FAB) exactly as ``flwr run`` does, hashes every file in it and signs the
hash with an Ed25519 key (``ssh-keygen -t ed25519``); the signature travels inside the bundle as
``fmcore-signature.json``. The node checks it before the bundle is installed or any of its code
imported (:mod:`.app_gate`). ``flwr run --run-config`` could still change the words a signed
fmcore app runs with, so the gate also remembers the bundle's own run config and fmcore's apps
refuse a run whose config differs (:func:`check_run_config`). Trusted keys are listed in
Flower's trusted-entities format: a YAML mapping of key ids to OpenSSH public keys.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import posixpath
import zipfile
from collections.abc import Mapping
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
SIGNATURE_SCHEME = "fmcore-app-signature-v2"
#: A bundle larger than this, unpacked, is refused before it is hashed (flwr caps FABs at 10 MB
#: packed; an app of config files is a few kB).
MAX_UNPACKED_BYTES = 256 * 2**20
_CHUNK = 2**20

#: The run config of the bundle this process installed after checking its signature (set by
#: the gate, in the process that then runs the app); None where no gate ran.
_signed_config: dict[str, object] | None = None


class AppRefused(FmcoreError):
    """An app bundle this node must not run; the message says why."""


def app_bundle(app_dir: Path) -> bytes:
    """The bundle ``flwr run app_dir`` sends: flwr's own packing, so the hash covers what runs."""
    from flwr.cli.build import build_fab_from_disk

    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{app_dir} is not an app directory (no pyproject.toml)")
    return build_fab_from_disk(app_dir)


def _checked_names(archive: zipfile.ZipFile) -> list[str]:
    """The archive's file names, refused when one could be read two ways (duplicates, control
    characters, absolute or un-normalised paths) or the files unpack to too much."""
    names = archive.namelist()
    for name in names:
        unusual = any(ord(c) < 32 for c in name) or name.startswith("/") or "\\" in name
        if unusual or posixpath.normpath(name) != name or name.startswith(".."):
            raise AppRefused(f"the app bundle holds a file named {name!r}")
    if len(set(names)) != len(names):
        raise AppRefused("the app bundle holds two files of one name")
    if sum(info.file_size for info in archive.infolist()) > MAX_UNPACKED_BYTES:
        raise AppRefused(f"the app bundle unpacks to more than {MAX_UNPACKED_BYTES:,} bytes")
    return names


def _file_hash(archive: zipfile.ZipFile, name: str) -> str:
    digest = hashlib.sha256()
    with archive.open(name) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_digest(bundle: bytes) -> str:
    """SHA-256 of the canonical JSON list of [path, content hash] of every file of the bundle but
    flwr's manifest and the signature, sorted by path."""
    try:
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            names = _checked_names(archive)
            pairs = sorted(
                [name, _file_hash(archive, name)]
                for name in names
                if name not in (FLOWER_MANIFEST, SIGNATURE_FILE)
            )
    except zipfile.BadZipFile as error:
        raise AppRefused(f"the app bundle is not a zip archive ({error})") from error
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


def _signed_message(digest: str) -> bytes:
    return f"{SIGNATURE_SCHEME}\n{digest}".encode()


def _private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"--key {path}: not an unencrypted OpenSSH key ({error})") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"--key {path}: an Ed25519 key is needed (ssh-keygen -t ed25519)")
    return key


def sign_app(app_dir: Path, private_key: Path, key_id: str) -> Path:
    """Sign ``app_dir`` with the Ed25519 OpenSSH key at ``private_key``; writes and returns
    ``app_dir/fmcore-signature.json``, after checking that the bundle ``flwr run`` builds now
    carries it and verifies. Any change to the app's files afterwards voids it."""
    key = _private_key(private_key)
    digest = bundle_digest(app_bundle(app_dir))
    record = {
        "scheme": SIGNATURE_SCHEME,
        "key-id": key_id,
        "digest": digest,
        "signature": base64.b64encode(key.sign(_signed_message(digest))).decode(),
    }
    target = app_dir / SIGNATURE_FILE
    atomic_write_text(target, json.dumps(record, indent=2) + "\n")
    try:
        verify_bundle(app_bundle(app_dir), {key_id: key.public_key()})
    except AppRefused as error:  # e.g. a .gitignore or fab-exclude rule drops the signature
        target.unlink()
        raise ConfigError(f"{app_dir}: the signed bundle does not verify: {error}") from error
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


def _signature_record(bundle: bytes) -> tuple[str, bytes, str]:
    """(key id, signature, signed digest) from the bundle's signature file."""
    try:
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            if SIGNATURE_FILE not in archive.namelist():
                raise AppRefused(f"the app is not signed (its bundle holds no {SIGNATURE_FILE})")
            if archive.getinfo(SIGNATURE_FILE).file_size > 64 * 1024:
                raise AppRefused(f"the app's {SIGNATURE_FILE} is too large")
            record = json.loads(archive.read(SIGNATURE_FILE))
        signature = base64.b64decode(record["signature"], validate=True)
        return str(record["key-id"]), signature, str(record["digest"])
    except zipfile.BadZipFile as error:
        raise AppRefused(f"the app bundle is not a zip archive ({error})") from error
    except (ValueError, KeyError, TypeError) as error:
        raise AppRefused(f"the app's {SIGNATURE_FILE} is unreadable ({error!r})") from error


def verify_bundle(bundle: bytes, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """The id of the trusted key that signed ``bundle``; :class:`AppRefused` saying why not.
    The signer is checked before any other file of the bundle is read."""
    key_id, signature, signed_digest = _signature_record(bundle)
    if key_id not in trusted:
        raise AppRefused(
            f"the app is signed by {key_id!r}, which this node does not trust"
            f" (trusted: {', '.join(sorted(trusted))})"
        )
    if signed_digest != bundle_digest(bundle):
        raise AppRefused(f"the app's files changed after {key_id!r} signed it")
    try:
        trusted[key_id].verify(signature, _signed_message(signed_digest))
    except InvalidSignature as error:
        raise AppRefused(f"the app's signature does not verify with {key_id!r}'s key") from error
    return key_id


def record_signed_config(bundle: bytes) -> None:
    """Remember the run config of ``bundle`` (verified) for :func:`check_run_config`."""
    from flwr.common.config import flatten_dict, get_fab_config

    global _signed_config
    _signed_config = flatten_dict(get_fab_config(bundle)["tool"]["flwr"]["app"].get("config"))


def check_run_config(run_config: Mapping[str, object]) -> None:
    """Refuse a run config other than the signed bundle's (``flwr run --run-config`` overrides);
    nothing to check in a process no gate ran in."""
    if _signed_config is not None and dict(run_config) != _signed_config:
        changed = sorted(
            key
            for key in {*run_config, *_signed_config}
            if run_config.get(key) != _signed_config.get(key)
        )
        raise AppRefused(
            f"the run config differs from the signed app's in {', '.join(changed)}"
            " (flwr run --run-config): sign an app with those words instead"
        )
