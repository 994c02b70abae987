"""Encrypting what Temporal stores: an AES-256-GCM payload codec and the keyring it encrypts with.

Prompts, generated code and reviewers' comments travel as workflow inputs, activity results, signals, query answers
and failure messages; Temporal keeps them in its database and shows them to whoever may read the namespace. With the
codec, the worker and every client encrypt each payload before it leaves the process, so the database, the history
and the Web UI hold only ciphertext, and only holders of the keyring read them back (directly, or through
``quantum codec-server``).

The whole original payload (its metadata too, such as its encoding) is encrypted, with the key id as associated
data: a payload cannot be moved under another key id unnoticed. Payloads that are not encrypted pass through, so runs
started before the codec was turned on still decode.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
"""The ``encoding`` metadata of an encrypted payload."""
KEY_ID_METADATA = "encryption-key-id"
"""The metadata naming the key a payload is encrypted with."""
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A key id: 1 to 64 letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit (it is stored in clear
in every payload's metadata and named in error messages, so it must be short and printable)."""


class CodecError(ValueError):
    """A keyring that cannot be used, or a payload that cannot be decrypted; the message names key ids, never keys."""


def _shown(key_id: bytes) -> str:
    """A key id as a payload or a file gives it, safe to name in a message whatever its bytes: quoted, control
    characters escaped, at most 64 characters."""
    text = key_id.decode("utf-8", "replace")
    return repr(text[:64] + ("…" if len(text) > 64 else ""))


class Keyring:
    """AES-256-GCM keys by id, one of them current: new payloads use the current key, any key of the ring decrypts.

    Rotation: add the new key, make it current, keep the old one as long as payloads encrypted with it must be read
    (the histories of runs that are still kept), then drop it.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str | None = None) -> None:
        if not keys:
            raise CodecError("the keyring holds no keys")
        for key_id, key in keys.items():
            if not KEY_ID_PATTERN.match(key_id):
                raise CodecError(
                    f"key id {_shown(key_id.encode())} is not 1 to 64 letters, digits, '.', '_' or '-' "
                    "starting with a letter or digit"
                )
            if len(key) != KEY_BYTES:
                raise CodecError(f"key {key_id!r} is {len(key)} bytes long; AES-256 takes {KEY_BYTES}")
        if current is None:
            if len(keys) > 1:
                raise CodecError(
                    f"the keyring holds {len(keys)} keys ({', '.join(map(repr, keys))}): set QUANTUM_CODEC_KEY_ID to "
                    "the one that encrypts new payloads"
                )
            current = next(iter(keys))
        elif current not in keys:
            raise CodecError(
                f"the current key {current!r} (QUANTUM_CODEC_KEY_ID) is not in the keyring, which holds "
                f"{', '.join(map(repr, keys))}"
            )
        self.current = current
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}

    @classmethod
    def from_json(cls, text: str, *, current: str | None = None, source: str = "the keyring") -> Keyring:
        """The keyring of ``{"<key id>": "<base64 of 32 bytes>", ...}``; ``source`` names where the text came from in
        the errors (which never quote it: it holds the keys)."""
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise CodecError(f"{source} is not JSON (line {err.lineno}, column {err.colno})") from None
        if not isinstance(entries, dict) or not all(isinstance(value, str) for value in entries.values()):
            raise CodecError(f'{source} is not a JSON object {{"<key id>": "<base64 key>", ...}}')
        keys = {}
        for key_id, encoded in entries.items():
            try:
                keys[key_id] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise CodecError(f"{source}: key {_shown(key_id.encode())} is not base64") from None
        try:
            return cls(keys, current)
        except CodecError as err:
            raise CodecError(f"{source}: {err}") from None

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    @property
    def current_cipher(self) -> AESGCM:
        return self._ciphers[self.current]

    def cipher(self, key_id: str) -> AESGCM | None:
        return self._ciphers.get(key_id)

    def __repr__(self) -> str:
        return f"Keyring(current={self.current!r}, ids={list(self.ids)!r})"


class EncryptionCodec(PayloadCodec):
    """Temporal's payload codec encrypting with a :class:`Keyring` (see the module's docstring)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        """``payload`` serialized and encrypted with the current key under a fresh random nonce."""
        key_id = self.keyring.current.encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.keyring.current_cipher.encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        """The original payload of an encrypted one; any other payload as it is.

        Raises:
            CodecError: The key it names is not in the keyring, or it fails authentication (altered, truncated, or
                encrypted with another key of that id).
        """
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"")
        cipher = self.keyring.cipher(key_id.decode("utf-8", "replace"))
        if cipher is None:
            raise CodecError(
                f"a payload is encrypted with key {_shown(key_id)}, which the keyring does not hold "
                f"(it holds {', '.join(map(repr, self.keyring.ids))}): add that key to QUANTUM_CODEC_KEYS"
            )
        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise CodecError(f"a payload encrypted with key {_shown(key_id)} is truncated")
        try:
            return Payload.FromString(cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id))
        except InvalidTag:
            raise CodecError(
                f"a payload encrypted with key {_shown(key_id)} failed authentication: it was altered, or encrypted "
                "with another key of that id"
            ) from None
        except DecodeError:  # authentic, yet not a payload: written by someone holding the key, not by this codec
            raise CodecError(f"a payload encrypted with key {_shown(key_id)} holds no payload") from None

    def __repr__(self) -> str:
        return f"EncryptionCodec({self.keyring!r})"
