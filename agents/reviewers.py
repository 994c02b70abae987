"""The deployment's reviewers: their public keys (read once per worker from ``QUANTUM_REVIEWER_KEYS``), their
groups (``QUANTUM_REVIEWER_GROUPS``) and the gates' default rules (``QUANTUM_REVIEW_DEFAULTS``), handed to runs by
an activity, so that each run records in its history what its reviews were judged with.

``QUANTUM_REVIEWER_KEYS`` names a directory of ``<name>.pub`` files (a raw 32-byte key, its base64, or a PEM
``PUBLIC KEY``), one such file, or a JSON file ``{"name": "<base64 raw key>"}``. Only Ed25519 keys are taken.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from pydantic import BaseModel, Field
from temporalio import activity

MAX_KEYS = 200


MAX_GROUPS = 100
MAX_GROUP_MEMBERS = 200


class ReviewerKeys(BaseModel):
    """What the ``reviews.keys`` activity returns: whether keys are configured, each reviewer's key, the reviewer
    groups and the gates' default rules (as ``events.models.GateRule`` JSON, which the workflows read)."""

    configured: bool = False
    keys: dict[str, str] = Field(default_factory=dict, description="Reviewer name -> base64 raw Ed25519 key.")
    groups: dict[str, list[str]] = Field(default_factory=dict, description="Group name -> its members' names.")
    defaults: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Gate -> its default rule.")


class KeyFileError(ValueError):
    """A key file that cannot be read as an Ed25519 public key (raised when the worker starts)."""


def _raw(data: bytes, where: str) -> bytes:
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        key = load_pem_public_key(text)
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{where}: not an Ed25519 public key")
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if len(data) == 32:
        return data
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise KeyFileError(f"{where}: neither a raw, base64 nor PEM Ed25519 public key") from None
    if len(raw) != 32:
        raise KeyFileError(f"{where}: an Ed25519 public key is 32 bytes, this one {len(raw)}")
    return raw


def load_public_keys(path: Path) -> dict[str, bytes]:
    """Each reviewer's raw public key from ``path`` (a directory of ``*.pub``, one ``.pub`` or a JSON file)."""
    found: dict[str, bytes] = {}
    if path.is_dir():
        for file in sorted(path.glob("*.pub")):
            found[file.stem] = _raw(file.read_bytes(), str(file))
    elif path.suffix == ".json":
        try:
            named = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise KeyFileError(f"{path}: {err}") from None
        if not isinstance(named, dict):
            raise KeyFileError(f"{path}: expected an object of name -> base64 key")
        for name, value in named.items():
            if not isinstance(value, str):
                raise KeyFileError(f"{path}: the key of {name!r} is not a string")
            found[str(name)] = _raw(value.encode(), f"{path}: {name}")
    elif path.is_file():
        found[path.stem] = _raw(path.read_bytes(), str(path))
    else:
        raise KeyFileError(f"{path}: no such file or directory")
    if len(found) > MAX_KEYS:
        raise KeyFileError(f"{path}: {len(found)} keys, over the {MAX_KEYS} limit")
    return found


def check_groups(groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """``groups`` if within bounds, else a :class:`ValueError` naming what is over."""
    if len(groups) > MAX_GROUPS:
        raise ValueError(f"{len(groups)} reviewer groups, over the {MAX_GROUPS} limit")
    for name, members in groups.items():
        if len(members) > MAX_GROUP_MEMBERS:
            raise ValueError(f"reviewer group {name!r} has {len(members)} members, over the {MAX_GROUP_MEMBERS} limit")
    return groups


class ReviewerKeysAgent:
    """Serves what was read when the worker started: the public keys (None: reviews are not authenticated), the
    groups and the gates' default rules."""

    def __init__(
        self,
        path: Path | None,
        *,
        groups: dict[str, list[str]] | None = None,
        defaults: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self._keys = None if path is None else load_public_keys(path)
        self._groups = check_groups(dict(groups or {}))
        self._defaults = dict(defaults or {})

    @activity.defn(name="reviews.keys")
    async def keys(self) -> ReviewerKeys:
        keys = {} if self._keys is None else {name: base64.b64encode(raw).decode() for name, raw in self._keys.items()}
        return ReviewerKeys(configured=self._keys is not None, keys=keys, groups=self._groups, defaults=self._defaults)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.keys]
