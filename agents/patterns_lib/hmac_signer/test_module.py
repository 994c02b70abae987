import base64
import hashlib
import hmac
import json

import pytest

from {{module}} import ExpiredError, SignatureError, Signer, b64url_decode, b64url_encode

KEY = bytes(range(32))


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_round_trip():
    clock = Clock()
    signer = Signer(KEY, clock=clock)
    signed = signer.sign({"user": "ada", "role": "admin"}, ttl=60)
    assert signer.verify(signed) == {"user": "ada", "role": "admin"}
    assert signer.expires_at(signed) == 1060.0


def test_token_format_is_base64url_hmac_sha256():
    signed = Signer(KEY, clock=Clock()).sign({"n": 1}, ttl=5)
    body, mac = signed.split(".")
    assert "=" not in signed and "+" not in signed and "/" not in signed
    expected = hmac.new(KEY, body.encode(), hashlib.sha256).digest()
    assert b64url_decode(mac) == expected
    assert json.loads(b64url_decode(body)) == {"exp": 1005.0, "payload": {"n": 1}}


def test_tokens_are_canonical():
    signer = Signer(KEY, clock=Clock())
    assert signer.sign({"a": 1, "b": 2}, ttl=5) == signer.sign({"b": 2, "a": 1}, ttl=5)


def test_expiry_uses_the_clock():
    clock = Clock()
    signer = Signer(KEY, clock=clock)
    signed = signer.sign({"a": 1}, ttl=10)
    clock.now = 1009.9
    assert signer.verify(signed) == {"a": 1}
    clock.now = 1010
    with pytest.raises(ExpiredError):
        signer.verify(signed)


def test_tampered_payload_is_rejected():
    signer = Signer(KEY, clock=Clock())
    body, mac = signer.sign({"role": "user"}, ttl=60).split(".")
    forged = b64url_encode(json.dumps({"exp": 99999, "payload": {"role": "admin"}}).encode())
    with pytest.raises(SignatureError, match="bad signature"):
        signer.verify(f"{forged}.{mac}")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    with pytest.raises(SignatureError, match="bad signature"):
        signer.verify(f"{body}.{flipped}")


def test_another_key_does_not_verify():
    signed = Signer(KEY, clock=Clock()).sign({"a": 1}, ttl=60)
    with pytest.raises(SignatureError):
        Signer(bytes(32), clock=Clock()).verify(signed)


def test_malformed_tokens():
    signer = Signer(KEY, clock=Clock())
    for bad in ["", "abc", ".abc", "abc.", "é.abc", "a.é"]:
        with pytest.raises(SignatureError):
            signer.verify(bad)


def test_invalid_key_and_ttl():
    with pytest.raises(ValueError):
        Signer(b"short")
    with pytest.raises(ValueError):
        Signer("x" * 40)
    with pytest.raises(ValueError):
        Signer(KEY).sign({}, ttl=0)


def test_b64url_helpers():
    for data in [b"", b"a", b"ab", b"abc", bytes(range(256))]:
        assert b64url_decode(b64url_encode(data)) == data
    assert b64url_encode(b"\xfb\xff") == base64.urlsafe_b64encode(b"\xfb\xff").decode().rstrip("=")
