"""The AES-256-GCM codec and its keyring: round trips, rotation, refusals, and keys that never show."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes
from temporalio.exceptions import ApplicationError

from quantum.client import data_converter
from quantum.codec import ENCODING, KEY_ID_METADATA, NONCE_BYTES, CodecError, EncryptionCodec, Keyring

from .support import keys_json, new_key, settings

SECRET_PROMPT = "a slugify helper; the launch date is 2031-04-01"


def keyring(keys: dict[str, str], current: str | None = None) -> Keyring:
    return Keyring.from_json(json.dumps(keys), current=current)


async def encode(codec: EncryptionCodec, value: object) -> Payload:
    (payload,) = await codec.encode(pydantic_data_converter.payload_converter.to_payloads([value]))
    return payload


async def decode(codec: EncryptionCodec, payload: Payload) -> object:
    (clear,) = await codec.decode([payload])
    (value,) = pydantic_data_converter.payload_converter.from_payloads([clear])
    return value


async def test_a_payload_round_trips_and_is_stored_encrypted_whole() -> None:
    codec = EncryptionCodec(keyring({"k1": new_key()}))
    value = {"prompt": SECRET_PROMPT, "requested_by": "ann"}
    payload = await encode(codec, value)

    assert payload.metadata["encoding"] == ENCODING == b"binary/encrypted"
    assert payload.metadata[KEY_ID_METADATA] == b"k1"
    assert set(payload.metadata) == {"encoding", KEY_ID_METADATA}  # the original's "json/plain" is inside
    assert b"slugify" not in payload.data and b"json/plain" not in payload.data
    assert await decode(codec, payload) == value


async def test_each_payload_gets_its_own_nonce() -> None:
    codec = EncryptionCodec(keyring({"k1": new_key()}))
    first, second = await encode(codec, SECRET_PROMPT), await encode(codec, SECRET_PROMPT)
    assert first.data[:NONCE_BYTES] != second.data[:NONCE_BYTES]
    assert first.data != second.data


async def test_rotation_old_payloads_decode_while_the_old_key_is_kept() -> None:
    _, keys = keys_json("2025-a", "2026-b")
    before = EncryptionCodec(keyring({"2025-a": keys["2025-a"]}))
    written_under_a = await encode(before, SECRET_PROMPT)

    after = EncryptionCodec(keyring(keys, current="2026-b"))
    written_under_b = await encode(after, SECRET_PROMPT)
    assert written_under_b.metadata[KEY_ID_METADATA] == b"2026-b"
    assert await decode(after, written_under_a) == SECRET_PROMPT
    assert await decode(after, written_under_b) == SECRET_PROMPT

    a_dropped = EncryptionCodec(keyring({"2026-b": keys["2026-b"]}))
    assert await decode(a_dropped, written_under_b) == SECRET_PROMPT
    with pytest.raises(CodecError) as refused:
        await decode(a_dropped, written_under_a)
    assert "'2025-a'" in str(refused.value) and "does not hold" in str(refused.value)
    assert "'2026-b'" in str(refused.value)  # what it holds instead


async def test_altered_ciphertext_is_refused_naming_the_key_id() -> None:
    codec = EncryptionCodec(keyring({"k1": new_key()}))
    payload = await encode(codec, SECRET_PROMPT)
    for position in (0, NONCE_BYTES, len(payload.data) - 1):  # the nonce, the ciphertext, the tag
        altered = Payload()
        altered.CopyFrom(payload)
        flipped = bytearray(payload.data)
        flipped[position] ^= 0x01
        altered.data = bytes(flipped)
        with pytest.raises(CodecError, match="key 'k1' failed authentication"):
            await codec.decode([altered])
    truncated = Payload(metadata=dict(payload.metadata), data=payload.data[:20])
    with pytest.raises(CodecError, match="key 'k1' is truncated"):
        await codec.decode([truncated])


async def test_a_payload_moved_under_another_key_id_is_refused() -> None:
    """The key id is authenticated: relabelling a payload with another id of the ring fails, even with equal keys."""
    key = new_key()
    codec = EncryptionCodec(keyring({"k1": key, "k2": key}, current="k1"))
    payload = await encode(codec, SECRET_PROMPT)
    relabelled = Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: b"k2"}, data=payload.data)
    with pytest.raises(CodecError, match="key 'k2' failed authentication"):
        await codec.decode([relabelled])


async def test_a_key_of_the_same_id_but_other_bytes_is_refused() -> None:
    payload = await encode(EncryptionCodec(keyring({"k1": new_key()})), SECRET_PROMPT)
    with pytest.raises(CodecError, match="key 'k1' failed authentication"):
        await EncryptionCodec(keyring({"k1": new_key()})).decode([payload])


async def test_an_unknown_or_unprintable_key_id_is_named_safely() -> None:
    codec = EncryptionCodec(keyring({"k1": new_key()}))
    payload = await encode(codec, SECRET_PROMPT)
    hostile = Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: b"\x1b[31mx" + b"y" * 500}, data=payload.data)
    with pytest.raises(CodecError) as refused:
        await codec.decode([hostile])
    message = str(refused.value)
    assert "\x1b" not in message and "\\x1b[31m" in message
    assert len(message) < 300


async def test_payloads_that_are_not_encrypted_pass_through() -> None:
    """Runs started before the codec was turned on keep decoding."""
    codec = EncryptionCodec(keyring({"k1": new_key()}))
    clear = pydantic_data_converter.payload_converter.to_payloads([{"prompt": SECRET_PROMPT}])
    assert await codec.decode(clear) == clear
    assert await decode(codec, clear[0]) == {"prompt": SECRET_PROMPT}


async def test_failure_messages_and_stack_traces_are_encrypted() -> None:
    converter = data_converter(settings(codec_keys=keys_json("k1")[0]))
    failure = Failure()
    error = ApplicationError(f"rejected: {SECRET_PROMPT}", type="GateRejected")
    await converter.encode_failure(error, failure)
    stored = failure.SerializeToString()
    assert SECRET_PROMPT.encode() not in stored and b"rejected" not in stored
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING

    decoded = await converter.decode_failure(failure)
    assert isinstance(decoded, ApplicationError)
    assert decoded.message == f"rejected: {SECRET_PROMPT}" and decoded.type == "GateRejected"


def test_without_keys_the_converter_is_the_plain_one() -> None:
    assert data_converter(settings()) is pydantic_data_converter


def test_with_keys_the_converter_encrypts_payloads_and_failures() -> None:
    converter = data_converter(settings(codec_keys=keys_json("k1")[0]))
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert isinstance(converter.failure_converter, DefaultFailureConverterWithEncodedAttributes)
    assert converter.payload_converter_class is pydantic_data_converter.payload_converter_class


def test_keys_come_from_a_file(tmp_path: Path) -> None:
    text, _ = keys_json("old", "new")
    path = tmp_path / "keys.json"
    path.write_text(text)
    ring = settings(codec_keys_file=path, codec_key_id="new").codec_keyring()
    assert ring is not None and ring.current == "new" and set(ring.ids) == {"old", "new"}


def test_the_only_key_is_current_and_several_need_a_choice() -> None:
    ring = settings(codec_keys=keys_json("solo")[0]).codec_keyring()
    assert ring is not None and ring.current == "solo"
    with pytest.raises(CodecError, match="holds 2 keys .*set QUANTUM_CODEC_KEY_ID"):
        settings(codec_keys=keys_json("a", "b")[0]).codec_keyring()
    with pytest.raises(CodecError, match="current key 'c' .*not in the keyring"):
        settings(codec_keys=keys_json("a", "b")[0], codec_key_id="c").codec_keyring()
    assert settings().codec_keyring() is None
    with pytest.raises(CodecError, match="no keys are"):
        settings(codec_key_id="a").codec_keyring()


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ('{"k1": "' + base64.b64encode(b"x" * 16).decode() + '"}', "key 'k1' is 16 bytes long; AES-256 takes 32"),
        ('{"k1": "not base64!"}', "key 'k1' is not base64"),
        ('{"has space": "' + base64.b64encode(b"x" * 32).decode() + '"}', "key id 'has space' is not"),
        ('{"' + "a" * 65 + '": "' + base64.b64encode(b"x" * 32).decode() + '"}', "is not 1 to 64"),
        ("{}", "holds no keys"),
        ('["k1"]', "is not a JSON object"),
        ('{"k1": 1}', "is not a JSON object"),
        ('{"k1": "abc', "is not JSON (line 1"),
    ],
)
def test_keys_that_cannot_be_used_are_refused_by_name(keys: str, problem: str) -> None:
    with pytest.raises(CodecError) as refused:
        settings(codec_keys=keys).codec_keyring()
    assert str(refused.value).startswith("QUANTUM_CODEC_KEYS")
    assert problem in str(refused.value)


def test_inline_keys_and_a_keys_file_are_not_both_taken(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="QUANTUM_CODEC_KEYS or QUANTUM_CODEC_KEYS_FILE, not both"):
        settings(codec_keys=keys_json("a")[0], codec_keys_file=tmp_path / "keys.json")


def test_an_unreadable_keys_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CodecError, match="QUANTUM_CODEC_KEYS_FILE .*missing.json cannot be read"):
        settings(codec_keys_file=tmp_path / "missing.json").codec_keyring()
    raw = tmp_path / "raw.key"
    raw.write_bytes(b"\xff" * 32)  # a raw key instead of the JSON keyring
    with pytest.raises(CodecError, match="raw.key is not UTF-8 text"):
        settings(codec_keys_file=raw).codec_keyring()


async def test_keys_never_appear_in_errors_or_reprs(tmp_path: Path) -> None:
    text, keys = keys_json("k1", "k2")
    key_texts = list(keys.values())
    key_bytes = [base64.b64decode(key) for key in key_texts]
    config = settings(codec_keys=text, codec_key_id="k1", codec_server_token="token-that-stays-secret-123")
    ring = config.codec_keyring()
    assert ring is not None
    codec = EncryptionCodec(ring)
    converter = data_converter(config)
    shown = [repr(config), str(config), repr(ring), repr(codec), repr(converter), config.model_dump_json()]

    payload = await encode(codec, SECRET_PROMPT)
    errors: list[BaseException] = []
    for broken in (
        Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: b"k3"}, data=payload.data),
        Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: b"k2"}, data=payload.data),
    ):
        with pytest.raises(CodecError) as refused:
            await codec.decode([broken])
        errors.append(refused.value)
    bad_length = json.dumps({"k1": key_texts[0], "k2": base64.b64encode(key_bytes[1][:31]).decode()})
    with pytest.raises(CodecError) as refused:
        settings(codec_keys=bad_length).codec_keyring()
    errors.append(refused.value)
    not_json = text[:-1]  # the keys, one brace short
    with pytest.raises(CodecError) as refused:
        settings(codec_keys=not_json).codec_keyring()
    errors.append(refused.value)
    shown += [str(err) for err in errors] + [repr(err) for err in errors]

    assert "token-that-stays-secret-123" not in " ".join(shown)
    for text_form, raw in zip(key_texts, key_bytes, strict=True):
        for seen in shown:
            assert text_form not in seen and text_form[:16] not in seen
            assert raw.hex() not in seen and str(raw)[2:-1] not in seen
