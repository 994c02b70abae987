"""Signed reviews: the canonical bytes a reviewer signs, Ed25519 signing and verification (pure computation).

The canonical form of a review is JSON with sorted keys and no spaces, UTF-8, of exactly
``run_id, gate, digest, reviewer, approved, comment, nonce, expires_at`` and, for runs that issue one, the gate's
``challenge``. A signature (base64 of 64 bytes) made with the reviewer's Ed25519 private key over these bytes binds
the decision to one run, one gate, the content the gate asked about (``digest``), one use (``nonce``), a deadline
(``expires_at``, ISO 8601 with a time zone) and, through the challenge, to one opening of the gate in one execution
of the run: a later run under the same workflow id (a reset, a start after the first closed) issues another
challenge, so no approval captured in one run counts in another.

Nothing here reads files, clocks or randomness: the workflow calls :func:`verify` from its handlers, with public keys
that reached it through its history (see ``workflows/reviews.py``). ``native`` verification uses ``cryptography``
(OpenSSL, about 0.1 ms), imported through the workflow sandbox; runs recorded before it verify with the pure-Python
:mod:`events.ed25519` (about 4 ms), so a replay decides every edge case exactly as the recording did.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from events import ed25519
from events.models import ReviewDecision, normalise_identity

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
    challenge: str | None = None,
) -> bytes:
    """The bytes a reviewer signs: sorted-key JSON without spaces, UTF-8 (``challenge`` only when given, so the
    reviews of runs recorded before challenges keep their bytes)."""
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
    if challenge is not None:
        fields["challenge"] = challenge
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def review_message(decision: ReviewDecision, run_id: str) -> bytes:
    """The bytes a reviewer signs: ``decision``'s canonical form for ``run_id`` (with its challenge, when given)."""
    return canonical(
        run_id=run_id,
        gate=decision.gate,
        digest=decision.digest,
        reviewer=decision.reviewer,
        approved=decision.approved,
        comment=decision.comment,
        nonce=decision.nonce,
        expires_at=decision.expires_at,
        challenge=decision.challenge,
    )


def sign(private_key: Ed25519PrivateKey, message: bytes) -> str:
    """The signature of ``message``, base64."""
    return base64.b64encode(private_key.sign(message)).decode("ascii")


def verify(public_key: bytes, message: bytes, signature: str, *, native: bool = False) -> bool:
    """Whether ``signature`` (base64) is ``public_key``'s (32 raw bytes) signature of ``message``; ``native``: with
    ``cryptography`` rather than the pure-Python verifier."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return False
    if not native:
        return ed25519.verify(public_key, message, raw)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(raw, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _prime_native_errors() -> None:
    """Have ``cryptography`` resolve the exception it raises for a bad signature now, at import, outside any
    workflow: its Rust module imports ``cryptography.exceptions.InvalidSignature`` the first time it raises it, and
    that import, made from inside Temporal's workflow sandbox, fails and aborts the process. Once resolved, the
    module keeps the type, and raising it imports nothing."""
    key = Ed25519PrivateKey.generate()
    signature = key.sign(b"quantum")
    try:
        key.public_key().verify(signature, b"another message")
    except InvalidSignature:
        return
    raise RuntimeError("Ed25519 verified a signature of another message")


_prime_native_errors()


def parse_expiry(expires_at: str) -> datetime | None:
    """``expires_at`` as an aware datetime, or None when it is not ISO 8601 with a time zone."""
    try:
        when = datetime.fromisoformat(expires_at)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


SIGNED_REVIEW_FIELDS = ("signature", "nonce", "expires_at", "challenge")
"""What a signed review of a run with gate challenges carries beside the decision."""


def unsigned_problem(decision: ReviewDecision) -> str | None:
    """Which of a signed review's fields ``decision`` lacks, as a refusal, or None."""
    missing = [name for name in SIGNED_REVIEW_FIELDS if not getattr(decision, name)]
    if missing:
        return f"the review is unsigned: this deployment takes only signed reviews (missing {', '.join(missing)})"
    return None


def expiry_problem(expires_at: str, now: datetime | None, max_validity_seconds: float = 0.0) -> str | None:
    """Why ``expires_at`` is not acceptable at ``now`` (unreadable, past, or further ahead than
    ``max_validity_seconds``; 0: no bound), or None. ``now`` None: only whether it is readable."""
    expiry = parse_expiry(expires_at)
    if expiry is None:
        return "expires_at is not an ISO 8601 time with a time zone"
    if now is None:
        return None
    if now >= expiry:
        return f"the review expired at {expires_at}"
    ahead = (expiry - now).total_seconds()
    if max_validity_seconds > 0 and ahead > max_validity_seconds:
        return (
            f"the review expires {ahead:.0f} s from now, over the {max_validity_seconds:.0f} s a signed review may be "
            "valid for (expires_at too far ahead)"
        )
    return None


def signed_review_problem(
    decision: ReviewDecision,
    *,
    run_id: str,
    keys: Mapping[str, bytes],
    now: datetime,
    max_validity_seconds: float = 0.0,
) -> str | None:
    """What is wrong with ``decision``'s signature whatever the run's state, or None: the checks an edge (the bridge)
    makes before a review reaches a run. The run checks again, with what only it knows (the gate's challenge and
    digest, its spent nonces); this only keeps the reviews no run could take away from it."""
    problem = unsigned_problem(decision)
    if problem:
        return problem
    key = keys.get(normalise_identity(decision.reviewer))
    if key is None:
        return f"no public key is configured for {decision.reviewer!r}"
    assert decision.expires_at is not None and decision.signature is not None
    problem = expiry_problem(decision.expires_at, now, max_validity_seconds)
    if problem:
        return problem
    if not verify(key, review_message(decision, run_id), decision.signature, native=True):
        return f"the signature does not verify with the key of {decision.reviewer!r} (altered, or another key)"
    return None
