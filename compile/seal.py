"""Artifact seals: a keyed digest over the manifest, so a consistently edited artifact is refused.

The seal (``manifest['seal']``) is HMAC-SHA256 over the manifest's canonical JSON (sorted keys, no
spaces, the ``seal`` field left out), keyed by this user's artifact key (:func:`artifact_key`).
The manifest records every program file's sha256, so editing a program and its recorded sha256
together, or any other manifest field, breaks the seal; only a holder of the key can reseal.
``compile`` writes sealed manifests (:func:`compile.manifest.write_manifest`);
:func:`compile.artifact.check_program` verifies the seal before any program is deserialised.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any, Mapping

from .errors import ArtifactError

SEAL = "seal"
KEY_ENV, KEY_FILE_ENV = "BIDL_ARTIFACT_KEY", "BIDL_ARTIFACT_KEY_FILE"

__all__ = ["SEAL", "KEY_ENV", "KEY_FILE_ENV", "key_file", "artifact_key", "seal_manifest", "check_seal",
           "body_sha256"]


def key_file() -> Path:
    """Where the artifact key lives: ``$BIDL_ARTIFACT_KEY_FILE``, else ``$XDG_CONFIG_HOME/bidl/artifact.key``
    (``~/.config/bidl/artifact.key``)."""
    if os.environ.get(KEY_FILE_ENV):
        return Path(os.environ[KEY_FILE_ENV])
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "bidl" / "artifact.key"


def artifact_key() -> bytes:
    """The key of artifact seals: ``$BIDL_ARTIFACT_KEY`` (hex), else the key file (see ``key_file``),
    created on first use (256 random bits, mode 0600; concurrent first uses agree on one key).
    Machines that load each other's artifacts need the same key (share the file or the variable)."""
    if os.environ.get(KEY_ENV):
        try:
            return bytes.fromhex(os.environ[KEY_ENV])
        except ValueError:
            raise ArtifactError(KEY_ENV, "incompatible", "is not a hex string") from None
    path = key_file()
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)  # atomic; loses to a concurrent creator, whose key everyone then uses
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise ArtifactError(path, "missing", f"cannot create the artifact key ({e}); set {KEY_FILE_ENV} "
                                                 f"or {KEY_ENV}") from None
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
        raise ArtifactError(path, "corrupt", f"unreadable artifact key ({e})") from None


def _canonical(doc: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != SEAL}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def _digest(key: bytes, doc: Mapping[str, Any]) -> str:
    return hmac.new(key, _canonical(doc), hashlib.sha256).hexdigest()


def body_sha256(doc: Mapping[str, Any]) -> str:
    """The unkeyed sha256 of what a seal covers (the canonical document without its seal): two manifests
    with the same body differ at most in who sealed them (shipping reseals a copy on its node)."""
    return hashlib.sha256(_canonical(doc)).hexdigest()


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"bidl artifact key id|" + key).hexdigest()[:12]


def seal_manifest(doc: Mapping[str, Any]) -> dict:
    """The manifest document ``doc`` with its keyed digest (what ``compile`` writes; resealing needs the key)."""
    key = artifact_key()
    return dict(doc, **{SEAL: {"alg": "hmac-sha256", "key_id": _key_id(key), "digest": _digest(key, doc)}})


def check_seal(path: str | Path, doc: Mapping[str, Any]) -> None:
    """ArtifactError (naming ``path``, the manifest file) unless the manifest document ``doc`` carries
    a keyed digest that verifies with this user's key."""
    seal = doc.get(SEAL)
    if not isinstance(seal, Mapping) or not isinstance(seal.get("digest"), str):
        raise ArtifactError(path, "incompatible", "manifest carries no keyed digest (built by an older version, "
                                                  "or the seal was removed): rebuild it (compile --force)")
    key = artifact_key()
    if seal.get("key_id") != _key_id(key):
        raise ArtifactError(path, "incompatible",
                            f"sealed with another artifact key (key id {seal.get('key_id')!r}, this process has "
                            f"{_key_id(key)!r} from {os.environ.get(KEY_ENV) and KEY_ENV or key_file()}): built "
                            f"elsewhere or the key changed; rebuild it, or share the key ({KEY_FILE_ENV})")
    if not hmac.compare_digest(seal["digest"], _digest(key, doc)):
        raise ArtifactError(path, "corrupt", "keyed digest does not match: the manifest or the program was "
                                             "changed after it was built; rebuild it (compile --force)")
