"""Whatever bytes arrive on an inbound subject, parsing either yields a valid event of that subject's type or raises
the product's ``EventError`` with a short, non-empty reason: never another exception, never a hang.

Parsing is the bridge's own sequence (``parse_envelope``, ``check_subject``, ``inbound_data``); what it accepts
round-trips through JSON and the data converter unchanged.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from events.bridge import BridgeConfig
from events.catalog import INBOUND, OUTBOUND, EventType, inbound_data
from events.envelope import (
    MAX_NESTING,
    CloudEvent,
    EventError,
    check_subject,
    parse_envelope,
    subject_for,
)

from .strategies import encoded, inbound_events, printable

MAX_BYTES = BridgeConfig().max_event_bytes
MAX_REASON_CHARS = 4096
"""A reason names the problem; it never grows with the event (the bridge's DLQ header holds 1000 characters)."""
INBOUND_SUBJECTS = [subject_for(name) for name in INBOUND]
CANCEL = "quantum.pipeline.cancel_requested"
ODD_CHARACTERS = ("\ud800", "\udfff", "\udc00\ud800", "\u202e", "\u2066", "\x00", "\u2028", "\ufeff", "\uffff")
NOT_UTF8 = (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf8\x88\x80\x80\x80")
ANY_JSON_VALUE_FIELDS = {"args", "kwargs", "expect", "expect_json", "json"}
"""Fields whose type is any JSON value: no value is of the wrong type there."""


def parse_inbound(raw: bytes, subject: str, *, max_bytes: int = MAX_BYTES) -> tuple[EventType, BaseModel]:
    """What the bridge does with a message before it acts on it."""
    event = parse_envelope(raw, max_bytes=max_bytes)
    if event.type in INBOUND:
        check_subject(event, subject)
    return inbound_data(event)


def refusal(raw: bytes, subject: str, *, max_bytes: int = MAX_BYTES) -> EventError:
    """The error parsing ``raw`` raises; fails the test when it is accepted or raises anything else."""
    try:
        kind, data = parse_inbound(raw, subject, max_bytes=max_bytes)
    except EventError as err:
        assert isinstance(err.reason, str) and err.reason.strip(), "a refusal always says why"
        assert len(err.reason) <= MAX_REASON_CHARS, f"a reason of {len(err.reason)} characters"
        assert str(err) == err.reason
        return err
    raise AssertionError(f"accepted as {kind.name}: {data!r:.300}")


def accepted_or_refused(raw: bytes, subject: str) -> tuple[EventType, BaseModel] | EventError:
    try:
        return parse_inbound(raw, subject)
    except EventError:
        return refusal(raw, subject)


def assert_forwardable(data: BaseModel) -> None:
    """What the bridge accepts it can hand to Temporal: JSON out and back gives the same request."""
    again = type(data).model_validate_json(data.model_dump_json())
    assert again == data


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every string value inside ``value``."""
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in string_paths(item, (*path, key))]
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in string_paths(item, (*path, index))]
    return []


def field_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every field (object member or list item) inside ``value``, containers included."""
    found: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, item in items:
        found.append((*path, key))
        found.extend(field_paths(item, (*path, key)))
    return found


def get_at(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


def set_at(body: Any, path: tuple[Any, ...], value: Any) -> None:
    get_at(body, path[:-1])[path[-1]] = value


# --- arbitrary and damaged input -------------------------------------------------------------------------------------


@given(raw=st.binary(max_size=4096), subject=st.sampled_from(INBOUND_SUBJECTS))
@example(raw=b"", subject=INBOUND_SUBJECTS[0])
@example(raw=b"null", subject=INBOUND_SUBJECTS[0])
@example(raw=b"[]", subject=INBOUND_SUBJECTS[0])
@example(raw=b'"{}"', subject=INBOUND_SUBJECTS[0])
@example(raw=b"1" * 5000, subject=INBOUND_SUBJECTS[0])
@example(raw=b'{"specversion": "1.0", "x": 1e999999}', subject=INBOUND_SUBJECTS[0])
@example(raw=b"\xef\xbb\xbf{}", subject=INBOUND_SUBJECTS[0])
def test_arbitrary_bytes_are_refused_with_a_reason(raw: bytes, subject: str) -> None:
    refusal(raw, subject)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=30,
)


@given(body=st.dictionaries(st.text(max_size=12), json_values, max_size=8), subject=st.sampled_from(INBOUND_SUBJECTS))
def test_arbitrary_json_objects_are_refused_with_a_reason(body: dict[str, Any], subject: str) -> None:
    refusal(encoded(body), subject)


@given(
    event=inbound_events(),
    extensions=st.dictionaries(st.from_regex(r"[a-z]{1,20}", fullmatch=True), json_values, max_size=4),
    unknown=st.dictionaries(st.text(printable, min_size=1, max_size=30), json_values, max_size=4),
)
def test_extension_attributes_are_kept_and_unknown_data_fields_are_refused_by_name(
    event: tuple[str, dict[str, Any]], extensions: dict[str, Any], unknown: dict[str, Any]
) -> None:
    """CloudEvents lets any extension attribute through; a field of ``data`` nobody knows is refused, named."""
    event_type, body = event
    fields = INBOUND[event_type].data.model_fields
    unknown = {key: value for key, value in unknown.items() if key not in fields}
    extensions = {key: value for key, value in extensions.items() if key not in CloudEvent.model_fields}
    raw = encoded({**body, **extensions, "data": {**body["data"], **unknown}})
    outcome = accepted_or_refused(raw, subject_for(event_type))
    if unknown:
        assert isinstance(outcome, EventError) and outcome.kind == "InvalidEvent"
        assert any(f"data.{key[:80]}" in outcome.reason for key in unknown), outcome.reason
    else:
        assert isinstance(outcome, tuple) and outcome[0].name == event_type
        assert_forwardable(outcome[1])


@given(event=inbound_events())
def test_every_truncation_of_a_valid_event_is_malformed(event: tuple[str, dict[str, Any]]) -> None:
    event_type, body = event
    raw = encoded(body)
    parse_inbound(raw, subject_for(event_type))  # whole, it is valid
    for end in range(len(raw)):
        assert refusal(raw[:end], subject_for(event_type)).kind == "MalformedEvent", raw[:end]


@given(
    event=inbound_events(),
    depth=st.integers(MAX_NESTING + 1, 50_000),
    opener=st.sampled_from(["[", '{"k":', '[{"k":']),
    closed=st.booleans(),
)
def test_nesting_beyond_the_bound_is_malformed_before_it_is_decoded(
    event: tuple[str, dict[str, Any]], depth: int, opener: str, closed: bool
) -> None:
    event_type, body = event
    closer = {"[": "]", '{"k":': "}", '[{"k":': "}]"}[opener]
    levels = depth if opener != '[{"k":' else depth // 2 + 1
    deep = opener * levels + "0" + (closer * levels if closed else "")
    head = encoded({**body, "deep": 0}).decode()
    raw = head.replace('"deep": 0', f'"deep": {deep}').encode()
    err = refusal(raw, subject_for(event_type), max_bytes=len(raw))
    assert err.kind == "MalformedEvent" and "nested deeper" in err.reason


@given(event=inbound_events(), depth=st.integers(0, MAX_NESTING - 1), brackets=st.integers(0, 5000))
def test_nesting_within_the_bound_and_brackets_in_strings_are_not_refused(
    event: tuple[str, dict[str, Any]], depth: int, brackets: int
) -> None:
    """An extension attribute nested ``depth + 1`` levels below the envelope, and a string of brackets."""
    event_type, body = event
    value: Any = "[{" * brackets
    for _ in range(depth):
        value = [value]
    kind, _ = parse_inbound(encoded({**body, "ext": value}), subject_for(event_type))
    assert kind.name == event_type


@given(
    event=inbound_events(),
    limit=st.integers(64, 4096),
    excess=st.integers(1, 20_000),
    shape=st.sampled_from(["string", "array", "data string"]),
)
def test_payloads_over_the_size_limit_are_refused_as_too_large(
    event: tuple[str, dict[str, Any]], limit: int, excess: int, shape: str
) -> None:
    event_type, body = event
    size = max(limit - len(encoded({**body, "pad": ""})), 0) + excess
    if shape == "string":
        body = {**body, "pad": "x" * size}
    elif shape == "array":
        body = {**body, "pad": [0] * (size // 3 + 1)}
    else:
        body = {**body, "data": {**body["data"], "pad": "é" * (size // 2 + 1)}}
    raw = encoded(body)
    assert len(raw) > limit
    err = refusal(raw, subject_for(event_type), max_bytes=limit)
    assert err.kind == "EventTooLarge" and str(len(raw)) in err.reason and str(limit) in err.reason


@pytest.mark.parametrize("excess", [1, MAX_BYTES])
def test_the_configured_limit_refuses_a_byte_more(excess: int) -> None:
    body: dict[str, Any] = {"specversion": "1.0", "id": "e1", "source": "ci", "type": CANCEL}
    body["data"] = {"pipeline_id": "pipeline-1", "requested_by": "ann", "reason": ""}
    body["data"]["reason"] = "x" * (MAX_BYTES - len(encoded(body)) + excess)
    raw = encoded(body)
    assert len(raw) == MAX_BYTES + excess
    assert refusal(raw, subject_for(body["type"])).kind == "EventTooLarge"
    body["data"]["reason"] = body["data"]["reason"][: -excess - 1]
    assert refusal(encoded(body), subject_for(body["type"])).kind == "InvalidEvent"  # within: only too long a reason


# --- odd unicode ------------------------------------------------------------------------------------------------------


@given(event=inbound_events(), data=st.data(), odd=st.sampled_from(ODD_CHARACTERS))
def test_odd_unicode_in_any_string_is_refused_or_accepted_in_a_form_that_can_be_passed_on(
    event: tuple[str, dict[str, Any]], data: st.DataObject, odd: str
) -> None:
    """Lone surrogates (as JSON escapes), bidi controls, NUL, separators and non-characters in any string but the
    contents of source files (``test_source_contents_that_cannot_be_passed_on_are_refused``)."""
    event_type, body = event
    paths = [p for p in string_paths(body) if p[:2] != ("data", "source")]
    path = data.draw(st.sampled_from(paths))
    text = get_at(body, path)
    at = data.draw(st.integers(0, len(text)))
    set_at(body, path, text[:at] + odd + text[at:])
    outcome = accepted_or_refused(encoded(body), subject_for(event_type))
    if isinstance(outcome, tuple):
        assert_forwardable(outcome[1])


@given(
    event_type=st.sampled_from(["quantum.pipeline.requested", "quantum.code.requested"]),
    content=st.text(st.characters(codec="utf-8"), max_size=20),
    odd=st.sampled_from(ODD_CHARACTERS),
)
@example(event_type="quantum.pipeline.requested", content="x = 1\n", odd="\ud800")
def test_source_contents_that_cannot_be_passed_on_are_refused(event_type: str, content: str, odd: str) -> None:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e1",
        "source": "ci",
        "type": event_type,
        "data": {"project": "app", "prompt": "a slugify helper", "requested_by": "ann", "source": {"a.py": ""}},
    }
    body["data"]["source"]["a.py"] = content + odd
    outcome = accepted_or_refused(encoded(body), subject_for(event_type))
    if isinstance(outcome, tuple):
        assert_forwardable(outcome[1])


@given(event=inbound_events(), data=st.data(), bad=st.sampled_from(NOT_UTF8))
def test_bytes_that_are_not_utf8_are_malformed(
    event: tuple[str, dict[str, Any]], data: st.DataObject, bad: bytes
) -> None:
    event_type, body = event
    raw = json.dumps(body, ensure_ascii=False).encode()
    at = data.draw(st.integers(0, len(raw)))
    err = refusal(raw[:at] + bad + raw[at:], subject_for(event_type))
    assert err.kind == "MalformedEvent" and "not UTF-8" in err.reason


# --- wrong types and unknown types ------------------------------------------------------------------------------------


def wrong_values(valid: Any) -> st.SearchStrategy[Any]:
    """JSON values of another type than ``valid``'s, none of which any JSON reader would take for it."""
    containers = st.sampled_from([[], [1, "x"], {}, {"k": "v"}])
    if isinstance(valid, bool):
        return st.one_of(containers, st.sampled_from(["maybe", "approve!", 2, -1, 0.5]))
    if isinstance(valid, int | float):
        return st.one_of(containers, st.sampled_from(["many", "", "1e", 0.5 if isinstance(valid, int) else "x"]))
    if isinstance(valid, str):
        return st.one_of(containers, st.sampled_from([0, 1, -3, 2.5, True, False]))
    if isinstance(valid, list):
        return st.one_of(st.sampled_from(["x", 1, True, 2.5]), st.just({"k": "v"}))
    return st.one_of(st.sampled_from(["x", 1, True, 2.5]), st.just([1]))


@given(event=inbound_events(), data=st.data())
def test_a_value_of_the_wrong_type_in_any_field_is_refused_naming_the_field(
    event: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    event_type, body = event
    paths = [
        p
        for p in field_paths(body)
        if not ANY_JSON_VALUE_FIELDS & {str(k) for k in p}
        and p not in {("time",), ("specversion",)}  # a number is a time (epoch seconds); specversion: below
        and not (len(p) > 1 and p[-2] == "source" and p[0] == "data")  # file contents: strings of any text
    ]
    path = data.draw(st.sampled_from(paths))
    wrong = data.draw(wrong_values(get_at(body, path)))
    set_at(body, path, wrong)
    err = refusal(encoded(body), subject_for(event_type))
    assert err.kind == "InvalidEvent", err.reason
    named = ".".join(str(key) for key in path)
    assert named in err.reason, f"{named!r} not named in {err.reason!r}"


@given(event=inbound_events(), version=st.one_of(json_values, st.text(printable, max_size=10)))
def test_a_specversion_other_than_1_0_is_refused_as_such(event: tuple[str, dict[str, Any]], version: Any) -> None:
    event_type, body = event
    if version == "1.0":
        version = "1.0 "
    err = refusal(encoded({**body, "specversion": version}), subject_for(event_type))
    assert err.kind == "WrongSpecVersion" and "specversion" in err.reason


@given(
    case=st.sampled_from(
        [
            ("quantum.review.submitted", "approved", "yes"),
            ("quantum.review.submitted", "approved", 1),
            ("quantum.pipeline.requested", "max_attempts", True),
            ("quantum.pipeline.requested", "max_attempts", "3"),
            ("quantum.code.requested", "tested", "on"),
        ]
    ),
)
@example(case=("quantum.review.submitted", "approved", "yes"))
def test_values_of_another_json_type_are_not_coerced(case: tuple[str, str, Any]) -> None:
    event_type, field, value = case
    bodies: dict[str, dict[str, Any]] = {
        "quantum.review.submitted": {"gate": "deploy", "reviewer": "bob", "approved": False, "pipeline_id": "p-1"},
        "quantum.pipeline.requested": {"project": "app", "prompt": "a slugify helper", "requested_by": "ann"},
        "quantum.code.requested": {"project": "app", "prompt": "a slugify helper", "requested_by": "ann"},
    }
    data = bodies[event_type]
    body = {"specversion": "1.0", "id": "e1", "source": "ci", "type": event_type, "data": {**data, field: value}}
    err = refusal(encoded(body), subject_for(event_type))
    assert f"data.{field}" in err.reason


@given(
    event=inbound_events(),
    event_type=st.one_of(
        st.from_regex(r"quantum\.[a-z_]{1,20}\.[a-z_]{1,20}", fullmatch=True).filter(lambda t: t not in INBOUND),
        st.sampled_from(sorted(OUTBOUND)),
        st.text(printable, max_size=40),
        st.sampled_from(["", "quantum.pipeline", "quantum.pipeline.requested.x", "QUANTUM.PIPELINE.REQUESTED"]),
    ),
)
def test_an_unknown_event_type_is_refused_whatever_its_data(event: tuple[str, dict[str, Any]], event_type: str) -> None:
    known, body = event
    body = {**body, "type": event_type}
    err = refusal(encoded(body), subject_for(known))
    assert err.kind in {"UnknownEventType", "InvalidEvent"} and ("type" in err.reason)


@given(length=st.integers(MAX_REASON_CHARS, MAX_BYTES - 200))
@example(length=10_000)
def test_the_reason_for_an_unknown_type_stays_short(length: int) -> None:
    event_type = "quantum.a." + "b" * length
    body = {"specversion": "1.0", "id": "e1", "source": "ci", "type": event_type, "data": {}}
    assert refusal(encoded(body), subject_for(event_type)).kind == "UnknownEventType"


@given(event=inbound_events(), subject=st.sampled_from([*INBOUND_SUBJECTS, "quantum.events.pipeline.started"]))
def test_an_event_on_another_types_subject_is_refused(event: tuple[str, dict[str, Any]], subject: str) -> None:
    event_type, body = event
    outcome = accepted_or_refused(encoded(body), subject)
    if subject == subject_for(event_type):
        assert isinstance(outcome, tuple) and outcome[0].name == event_type
    else:
        assert isinstance(outcome, EventError) and outcome.kind == "WrongSubject"


# --- valid events -----------------------------------------------------------------------------------------------------


@given(event=inbound_events())
def test_valid_events_round_trip(event: tuple[str, dict[str, Any]]) -> None:
    event_type, body = event
    kind, data = parse_inbound(encoded(body), subject_for(event_type))
    assert kind is INBOUND[event_type] and isinstance(data, kind.data)
    assert data == kind.data.model_validate(body["data"])
    assert_forwardable(data)
    again = CloudEvent.model_validate(body).to_bytes()
    kind_again, data_again = parse_inbound(again, subject_for(event_type))
    assert kind_again is kind and data_again == data


# --- binary mode: the attributes in ce- headers, the data in the body ------------------------------------------------

HEADER_SAFE = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) not in '"%')
"""What the NATS binding leaves as it is in a header value; everything else is percent-encoded."""


def in_binary_mode(body: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """A structured event's body as the headers and body of the same event in binary mode."""
    headers = {f"ce-{name}": quote(str(value), safe=HEADER_SAFE) for name, value in body.items() if name != "data"}
    return headers, encoded(body["data"])


@given(event=inbound_events())
def test_an_event_in_binary_mode_is_the_event_in_structured_mode(event: tuple[str, dict[str, Any]]) -> None:
    event_type, body = event
    headers, data = in_binary_mode(body)
    binary = parse_envelope(data, max_bytes=MAX_BYTES, headers=headers)
    assert binary == parse_envelope(encoded(body), max_bytes=MAX_BYTES)
    check_subject(binary, subject_for(event_type))


header_names = st.sampled_from(
    ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-datacontenttype", "CE-ID", "Ce-Type"]
    + ["ce-data", "ce-", "ce-x_y", "Content-Type", "Nats-Msg-Id"]
) | st.text(max_size=24).map(lambda name: f"ce-{name}")
header_values = st.sampled_from(["1.0", "quantum.pipeline.requested", "application/json", "x" * 5000]) | st.text(
    max_size=60
)


@given(
    headers=st.dictionaries(header_names, header_values, max_size=8),
    raw=st.binary(max_size=512) | st.just(b'{"project": "p", "prompt": "a slugify helper", "requested_by": "a"}'),
    subject=st.sampled_from(INBOUND_SUBJECTS),
)
def test_any_ce_headers_give_an_event_or_a_refusal_with_a_reason(
    headers: dict[str, str], raw: bytes, subject: str
) -> None:
    try:
        event = parse_envelope(raw, max_bytes=MAX_BYTES, headers=headers)
        if event.type in INBOUND:
            check_subject(event, subject)
        inbound_data(event)
    except EventError as err:
        assert err.reason.strip() and len(err.reason) <= MAX_REASON_CHARS
