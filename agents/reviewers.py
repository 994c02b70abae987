"""The deployment's reviewers: their public keys (read once per worker from ``QUANTUM_REVIEWER_KEYS``), their
groups (``QUANTUM_REVIEWER_GROUPS``) and the gates' default rules (``QUANTUM_REVIEW_DEFAULTS``), handed to runs by
an activity, so that each run records in its history what its reviews were judged with.

``QUANTUM_REVIEWER_KEYS`` names a directory of ``<name>.pub`` files (a raw 32-byte key, its base64, or a PEM
``PUBLIC KEY``), one such file, or a JSON file ``{"name": "<base64 raw key>"}``. Only Ed25519 keys are taken, and
no two names may be one reviewer once compared as the runs compare them (``Erin.pub`` and a full-width
``ｅｒｉｎ.pub`` are both ``erin``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
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

_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_SPACES = re.compile(r"\s+")


class ReviewerKeys(BaseModel):
    """What the ``reviews.keys`` activity returns: whether keys are configured, each reviewer's key, the reviewer
    groups and the gates' default rules (as ``events.models.GateRule`` JSON, which the workflows read)."""

    configured: bool = False
    keys: dict[str, str] = Field(default_factory=dict, description="Reviewer name -> base64 raw Ed25519 key.")
    groups: dict[str, list[str]] = Field(default_factory=dict, description="Group name -> its members' names.")
    defaults: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Gate -> its default rule.")
    max_validity_seconds: float = Field(
        default=0.0, description="How far past the gate's clock a signed review may expire (0: no bound)."
    )


class KeyFileError(ValueError):
    """A key file that cannot be read as an Ed25519 public key (raised when the worker starts)."""


def reviewer_identity(name: str) -> str:
    """The form in which the runs compare reviewers' names: Unicode NFKC, invisible characters removed, case-folded,
    inner spaces collapsed, trimmed.

    It is ``events.models.normalise_identity``, which agents cannot import (agents and events import nothing of each
    other); a test holds the two to one result.
    """
    text = unicodedata.normalize("NFKC", name)
    visible = "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES)
    return _SPACES.sub(" ", visible.casefold()).strip()


class _NamedKeys:
    """The keys read so far, refusing a name that is the same reviewer as one read before."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self._where: dict[str, str] = {}

    def add(self, name: str, key: bytes, where: str) -> None:
        """Take ``key`` for ``name``, read from ``where`` (a file, or an entry of a JSON file)."""
        identity = reviewer_identity(name)
        if not identity:
            raise KeyFileError(f"{where}: {name!r} names no reviewer once compared as runs compare names")
        if identity in self._where:
            raise KeyFileError(
                f"{self._where[identity]} and {where} both name the reviewer {identity!r} "
                "(names are compared in Unicode NFKC, case-folded): keep one key per reviewer"
            )
        self._where[identity] = where
        self.keys[name] = key


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
    """Each reviewer's raw public key from ``path`` (a directory of ``*.pub``, one ``.pub`` or a JSON file).

    Raises:
        KeyFileError: A key cannot be read, there are too many, or two names are one reviewer (``erin`` and
            ``Erin``), which would otherwise leave one of the keys unused without a word.
    """
    named = _NamedKeys()
    if path.is_dir():
        for file in sorted(path.glob("*.pub")):
            named.add(file.stem, _raw(file.read_bytes(), str(file)), str(file))
    elif path.suffix == ".json":
        for name, value in _json_entries(path):
            named.add(name, _raw(value.encode(), f"{path}: {name}"), f"{path}: entry {name!r}")
    elif path.is_file():
        named.add(path.stem, _raw(path.read_bytes(), str(path)), str(path))
    else:
        raise KeyFileError(f"{path}: no such file or directory")
    if len(named.keys) > MAX_KEYS:
        raise KeyFileError(f"{path}: {len(named.keys)} keys, over the {MAX_KEYS} limit")
    return named.keys


class _Entries(list[tuple[str, Any]]):
    """The members of a JSON object in their order, a name given twice kept twice."""


def _json_entries(path: Path) -> list[tuple[str, str]]:
    """The ``name -> base64 key`` entries of a JSON key file, each one as written (a repeated name included)."""
    try:
        entries = json.loads(path.read_text(), object_pairs_hook=_Entries)
    except (OSError, ValueError) as err:
        raise KeyFileError(f"{path}: {err}") from None
    if not isinstance(entries, _Entries):
        raise KeyFileError(f"{path}: expected an object of name -> base64 key")
    checked = []
    for name, value in entries:
        if not isinstance(value, str):
            raise KeyFileError(f"{path}: the key of {name!r} is not a string")
        checked.append((name, value))
    return checked


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
        max_validity_seconds: float = 0.0,
    ) -> None:
        self._keys = None if path is None else load_public_keys(path)
        self._groups = check_groups(dict(groups or {}))
        self._defaults = dict(defaults or {})
        self._max_validity_seconds = max_validity_seconds

    @activity.defn(name="reviews.keys")
    async def keys(self) -> ReviewerKeys:
        keys = {} if self._keys is None else {name: base64.b64encode(raw).decode() for name, raw in self._keys.items()}
        return ReviewerKeys(
            configured=self._keys is not None,
            keys=keys,
            groups=self._groups,
            defaults=self._defaults,
            max_validity_seconds=self._max_validity_seconds,
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [self.keys]
