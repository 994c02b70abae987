"""Signed reviews: the canonical bytes a reviewer signs, Ed25519 signing and verification (pure computation).

The canonical form of a review is JSON with sorted keys and no spaces, UTF-8, of exactly
``run_id, gate, digest, reviewer, approved, comment, nonce, expires_at``. A signature (base64 of 64 bytes) made
with the reviewer's Ed25519 private key over these bytes binds the decision to one run, one gate, the content the
gate asked about (``digest``), one use (``nonce``) and a deadline (``expires_at``, ISO 8601 with a time zone).

Nothing here reads files, clocks or randomness: the workflow calls :func:`verify` (pure Python, :mod:`events.ed25519`)
from its handlers, with public keys that reached it through its history (see ``workflows/reviews.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from events import ed25519

if TYPE_CHECKING:  # signing happens outside workflows; the workflow sandbox never loads the native module
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIGNED_FIELDS = ("run_id", "gate", "digest", "reviewer", "approved", "comment", "nonce", "expires_at")


def canonical(
    *,
    run_id: str,
    gate: str,
    digest: str | None,
    reviewer: str,
    approved: bool,
    comment: str,
    nonce: str | None,
    expires_at: str | None,
) -> bytes:
    """The bytes a reviewer signs: sorted-key JSON without spaces, UTF-8."""
    fields: dict[str, Any] = {
        "run_id": run_id,
        "gate": gate,
        "digest": digest,
        "reviewer": reviewer,
        "approved": approved,
        "comment": comment,
        "nonce": nonce,
        "expires_at": expires_at,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(private_key: Ed25519PrivateKey, message: bytes) -> str:
    """The signature of ``message``, base64."""
    return base64.b64encode(private_key.sign(message)).decode("ascii")


def verify(public_key: bytes, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is ``public_key``'s (32 raw bytes) signature of ``message``."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return False
    return ed25519.verify(public_key, message, raw)


def parse_expiry(expires_at: str) -> datetime | None:
    """``expires_at`` as an aware datetime, or None when it is not ISO 8601 with a time zone."""
    try:
        when = datetime.fromisoformat(expires_at)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None
