"""The workers' audit key: the Ed25519 key that signs every record they append to ``QUANTUM_AUDIT``.

``QUANTUM_AUDIT_SIGNING_KEY`` names a PEM private key (in production a mounted Secret, the same for every worker);
unset, the key lives at ``<data dir>/keys/audit-signing.pem`` and is made there on first use (mode 0600). ``quantum
audit verify`` trusts the public keys of ``QUANTUM_AUDIT_VERIFY_KEYS`` (a directory of ``*.pub`` or one file; raw,
base64 or PEM), else the public half of the signing key. A publisher on the bus without the private key can append
well-hashed records but not signed ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from agents.reviewers import KeyFileError, load_public_keys
from events.audit import key_id, public_bytes
from quantum.settings import Settings

DEFAULT_KEY = Path("keys") / "audit-signing.pem"


def signing_key_path(settings: Settings) -> Path:
    return settings.audit_signing_key or settings.data_path / DEFAULT_KEY


def read_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (PEM), or a :class:`KeyFileError` naming what is wrong."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise KeyFileError(f"{path}: not a readable PEM private key ({type(err).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def audit_signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The workers' audit key: the configured one, else the data directory's, made on first use."""
    path = signing_key_path(settings)
    if settings.audit_signing_key is not None or path.exists():
        return read_signing_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    try:
        os.link(tmp, path)  # two workers starting at once: the first key made wins, the other reads it
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return read_signing_key(path)


def audit_verify_keys(settings: Settings) -> dict[str, bytes]:
    """The public keys ``audit verify`` trusts, by key id (empty when none is configured or can be read)."""
    if settings.audit_verify_keys is not None:
        return {key_id(raw): raw for raw in load_public_keys(settings.audit_verify_keys).values()}
    path = signing_key_path(settings)
    if not path.exists():
        return {}
    raw = public_bytes(read_signing_key(path))
    return {key_id(raw): raw}
