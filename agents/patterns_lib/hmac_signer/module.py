"""{{title}}: HMAC-SHA256 signed, expiring tokens.

Generated for the request: {{prompt}}

A token is ``base64url(JSON body) + "." + base64url(HMAC-SHA256(key, body part))``; the body holds the payload and
an ``exp`` timestamp. The key is always supplied by the caller (from a secret store or the environment), never
written in code. Tokens are signed, not encrypted: do not put confidential data in the payload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

MIN_KEY_BYTES = 32


class SignatureError(ValueError):
    """The token is malformed or its signature does not match."""


class ExpiredError(SignatureError):
    """The signature is good but the token has expired."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs payloads into tokens and verifies them, with ``clock`` giving the current Unix time."""

    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the key must be at least {MIN_KEY_BYTES} random bytes")
        self._key = key
        self._clock = clock

    def _mac(self, body: str) -> str:
        return b64url_encode(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def sign(self, payload: Mapping[str, Any], *, ttl: float) -> str:
        """A token for ``payload`` (JSON-serialisable) valid for ``ttl`` seconds from now."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        document = {"exp": self._clock() + ttl, "payload": dict(payload)}
        body = b64url_encode(json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        return f"{body}.{self._mac(body)}"

    def verify(self, signed: str) -> dict[str, Any]:
        """The payload of ``signed``; :class:`SignatureError` if tampered with, :class:`ExpiredError` if expired."""
        body, dot, mac = signed.partition(".")
        if not dot or not body or not mac or not body.isascii():
            raise SignatureError("malformed token")
        if not hmac.compare_digest(mac.encode("utf-8"), self._mac(body).encode("ascii")):
            raise SignatureError("bad signature")
        document = json.loads(b64url_decode(body))
        if self._clock() >= document["exp"]:
            raise ExpiredError("token expired")
        return dict(document["payload"])

    def expires_at(self, signed: str) -> float:
        """When a (verified) token expires, as Unix time."""
        self.verify(signed)
        return float(json.loads(b64url_decode(signed.partition(".")[0]))["exp"])
