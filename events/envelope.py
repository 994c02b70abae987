"""The CloudEvents 1.0 envelope, in JSON structured mode or in the NATS binding's binary mode, and parsing that says
exactly what is wrong.

Structured mode: the message body is the whole event as JSON. Binary mode (the CloudEvents NATS protocol binding,
NATS 2.2 and later): each attribute travels in a header ``ce-<attribute>`` (percent-encoded), the body is the data,
and ``datacontenttype`` is ``ce-datacontenttype`` (or ``Content-Type``). A message with a ``ce-`` header is binary
unless its ``Content-Type`` is ``application/cloudevents...``. Both come out as the same :class:`CloudEvent`, with
the same checks and bounds; binary mode carries JSON data only.

Error tree (``EventError.reason`` is what the dead-letter header carries)::

    EventError
    ├── MalformedEvent      the bytes are not a JSON object in UTF-8 (nor nested deeper than ``MAX_NESTING``)
    ├── WrongSpecVersion    ``specversion`` is not "1.0"
    ├── UnknownEventType    ``type`` is not one this product accepts
    ├── WrongSubject        the event arrived on a subject other than the one of its ``type``
    ├── InvalidEvent        a required attribute or a field of ``data`` is missing or invalid
    └── EventTooLarge       the payload is over the configured size

Reasons are built from the event's own text in places (a field's name, a validator's message): whoever puts a
reason into a header or a log line makes it safe there (``events.dead_letters.header_value``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
SUBJECT_PREFIX = "quantum.events."
DLQ_SUBJECT = "quantum.dlq.events"
MAX_NESTING = 64
"""The deepest nesting of arrays and objects an event may have; the deepest event of the catalogue has 5."""
MAX_PROBLEMS = 10
"""How many validation problems a reason names before it says how many more there are."""
HEADER_PREFIX = "ce-"
"""Binary mode: the prefix of the header of each attribute."""
STRUCTURED_CONTENT_TYPE = "application/cloudevents"
"""Binary mode's exception: a message whose ``Content-Type`` starts with this is structured whatever its headers."""
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,20}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_QUOTED_PAIR = re.compile(r"\\(.)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class EventError(ValueError):
    """An event that cannot be used; ``reason`` is short and names the problem."""

    kind = "InvalidEvent"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedEvent(EventError):
    kind = "MalformedEvent"


class WrongSpecVersion(EventError):
    kind = "WrongSpecVersion"


class UnknownEventType(EventError):
    kind = "UnknownEventType"


class InvalidEvent(EventError):
    kind = "InvalidEvent"


class EventTooLarge(EventError):
    kind = "EventTooLarge"


class WrongSubject(EventError):
    kind = "WrongSubject"


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event; ``data`` is the JSON object its ``type`` defines."""

    model_config = ConfigDict(extra="allow")  # CloudEvents extension attributes are allowed

    specversion: str = SPEC_VERSION
    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    source: str = Field(min_length=1)
    type: str = Field(min_length=1, pattern=r"^quantum\.[a-z_]+\.[a-z_]+$")
    subject: str | None = None
    time: datetime | None = None
    datacontenttype: str = CONTENT_TYPE
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("datacontenttype")
    @classmethod
    def _json_only(cls, value: str) -> str:
        if value != CONTENT_TYPE:
            raise ValueError(f"datacontenttype must be {CONTENT_TYPE}")
        return value

    @property
    def nats_subject(self) -> str:
        return subject_for(self.type)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def subject_for(event_type: str, prefix: str = SUBJECT_PREFIX) -> str:
    """``quantum.<noun>.<verb>`` travels on ``quantum.events.<noun>.<verb>`` (or ``<prefix><noun>.<verb>``)."""
    return prefix + event_type.removeprefix("quantum.")


def new_event(
    event_type: str,
    data: BaseModel | dict[str, Any],
    *,
    source: str,
    event_id: str | None = None,
    subject: str | None = None,
) -> CloudEvent:
    """A CloudEvent of ``event_type`` carrying ``data``, stamped now."""
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return CloudEvent(
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=event_type,
        subject=subject,
        time=datetime.now(UTC),
        data=payload,
    )


def check_subject(event: CloudEvent, subject: str, prefix: str = SUBJECT_PREFIX) -> None:
    """Raise :class:`WrongSubject` unless ``event`` arrived on the subject of its type.

    Permissions on the bus are granted per subject: an event whose body claims another type than its subject would
    act with rights its publisher may not have.
    """
    expected = subject_for(event.type, prefix)
    if subject != expected:
        raise WrongSubject(f"an event of type {event.type} travels on {expected}, but it arrived on {subject}")


def describe(err: ValidationError, prefix: str = "") -> str:
    """The problems of ``err``, one clause each: at most :data:`MAX_PROBLEMS`, each location part cut to 80 chars."""
    problems = err.errors()
    clauses = [
        f"{prefix}{'.'.join(str(p)[:80] for p in problem['loc']) or '(event)'}: {problem['msg']}"
        for problem in problems[:MAX_PROBLEMS]
    ]
    if len(problems) > MAX_PROBLEMS:
        clauses.append(f"and {len(problems) - MAX_PROBLEMS} more problems")
    return "; ".join(clauses)


_STRUCTURE = re.compile(r'["\\\[\]{}]')


def nests_deeper_than(text: str, limit: int) -> bool:
    """Whether the arrays and objects of the JSON ``text`` nest more than ``limit`` levels deep.

    Counted without recursion and stopping at the first level past ``limit``, so the cost is bounded by the text's
    length whatever it holds. Brackets inside strings do not count.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURE.finditer(text):
        pos = match.start()
        if pos == escaped_at:
            continue
        char = match.group()
        if in_string:
            if char == "\\":
                escaped_at = pos + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def load_json(raw: bytes, *, max_depth: int = MAX_NESTING) -> Any:
    """Decode ``raw`` as JSON in UTF-8, raising :class:`MalformedEvent` for anything else.

    Refused: bytes that are not UTF-8 (the CloudEvents JSON format is UTF-8), text that is not JSON (``NaN`` and
    ``Infinity`` included), numbers Python will not convert (over 4300 digits), and nesting deeper than
    ``max_depth``, which is checked before decoding so that decoding never recurses deeply.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedEvent(f"not UTF-8: {err}") from None
    if nests_deeper_than(text, max_depth):
        raise MalformedEvent(f"nested deeper than {max_depth} levels of arrays and objects")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise MalformedEvent(f"nested deeper than {max_depth} levels of arrays and objects") from None
    except ValueError as err:  # JSONDecodeError, and the conversion limits of int()
        raise MalformedEvent(f"not JSON: {err}") from None


def parse_envelope(raw: bytes, *, max_bytes: int, headers: Mapping[str, str] | None = None) -> CloudEvent:
    """Parse a message as a CloudEvent, raising the :class:`EventError` that names what is wrong.

    Args:
        raw: The message body.
        max_bytes: The largest event taken: the body, and in binary mode its ``ce-`` headers with it.
        headers: The message's headers; with a ``ce-`` header the event is in binary mode (:func:`is_binary`).
    """
    if headers and is_binary(headers):
        return parse_binary(raw, headers, max_bytes=max_bytes)
    if len(raw) > max_bytes:
        raise EventTooLarge(f"payload is {len(raw)} bytes, over the {max_bytes} byte limit")
    obj = load_json(raw)
    if not isinstance(obj, dict):
        raise MalformedEvent(f"a CloudEvent is a JSON object, not {type(obj).__name__}")
    _check_specversion(obj)
    return _validated(obj)


def _check_specversion(obj: dict[str, Any], where: str = "") -> None:
    if obj.get("specversion") != SPEC_VERSION:
        got = repr(obj.get("specversion"))[:80]
        raise WrongSpecVersion(f"specversion must be {SPEC_VERSION!r}, got {got}{where}")


def _validated(obj: dict[str, Any]) -> CloudEvent:
    """``obj`` (attributes and data) as a :class:`CloudEvent`, or :class:`InvalidEvent` naming its problems."""
    try:
        return CloudEvent.model_validate(obj)
    except ValidationError as err:
        raise InvalidEvent(describe(err)) from None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of the header ``name`` whatever the case it was written in (NATS header names are
    case-insensitive), None when absent."""
    return next((value for key, value in headers.items() if key.lower() == name), None)


def is_binary(headers: Mapping[str, str]) -> bool:
    """Whether a message with ``headers`` is a binary-mode CloudEvent: it has a ``ce-`` header and no
    ``Content-Type`` of ``application/cloudevents...`` (which makes it structured)."""
    content_type = (_header(headers, "content-type") or "").strip().lower()
    if content_type.startswith(STRUCTURED_CONTENT_TYPE):
        return False
    return any(name.lower().startswith(HEADER_PREFIX) for name in headers)


def parse_binary(raw: bytes, headers: Mapping[str, str], *, max_bytes: int) -> CloudEvent:
    """Parse a binary-mode CloudEvent: its attributes from the ``ce-`` headers, its data the JSON body.

    The same attributes are required, and the same bounds and checks apply, as in structured mode; a header value
    is printable ASCII, percent-encoded UTF-8 (double quotes around it are taken off first, as the binding says).

    Raises:
        EventError: Naming what is wrong, and the header it is in.
    """
    attributes = _ce_headers(headers)
    size = len(raw) + sum(len(name) + len(value) for name, value in attributes.values())
    if size > max_bytes:
        raise EventTooLarge(f"binary-mode event is {size} bytes with its ce- headers, over the {max_bytes} byte limit")
    obj: dict[str, Any] = {key: _header_text(name, value) for key, (name, value) in attributes.items()}
    _check_specversion(obj, " in header ce-specversion")
    obj["datacontenttype"] = _json_content_type(obj.get("datacontenttype"), _header(headers, "content-type"))
    try:
        obj["data"] = load_json(raw)
    except MalformedEvent as err:
        raise MalformedEvent(f"the body (a binary-mode event's data) is {err.reason}") from None
    return _validated(obj)


def _ce_headers(headers: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Each attribute of the ``ce-`` headers, with the header's name and raw value; refused: a name that is no
    attribute, two headers of one attribute (names differing in case only), ``ce-data``."""
    found: dict[str, tuple[str, str]] = {}
    for name, value in headers.items():
        if not name.lower().startswith(HEADER_PREFIX):
            continue
        attribute = name[len(HEADER_PREFIX) :].lower()
        if not _ATTRIBUTE_NAME.fullmatch(attribute):
            raise InvalidEvent(f"header {name[:80]!r} names no CloudEvents attribute (1 to 20 of a-z and 0-9)")
        if attribute == "data":
            raise InvalidEvent("header ce-data: in binary mode the data is the message body")
        if attribute in found:
            raise InvalidEvent(f"headers {found[attribute][0]!r} and {name!r} both give the attribute {attribute}")
        found[attribute] = (name, value)
    return found


def _header_text(name: str, value: str) -> str:
    """An attribute's value from its header: printable ASCII; double quotes (with their backslash escapes) taken
    off; then one round of percent-decoding, into UTF-8 with no control character."""
    if not _HEADER_VALUE.fullmatch(value):
        raise InvalidEvent(f"header {name}: not printable ASCII (percent-encode other characters)")
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = _QUOTED_PAIR.sub(r"\1", text[1:-1])
    if _BAD_PERCENT.search(text):
        raise InvalidEvent(f"header {name}: a % not followed by two hexadecimal digits")
    try:
        decoded = unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(f"header {name}: percent-encodes bytes that are not UTF-8") from None
    if _CONTROL.search(decoded):
        raise InvalidEvent(f"header {name}: holds a control character")
    return decoded


def _json_content_type(attribute: str | None, header: str | None) -> str:
    """The data's content type, ``ce-datacontenttype`` or else ``Content-Type`` (JSON when neither is given);
    anything but ``application/json`` (with ``charset=utf-8`` at most) is refused: the data is read as JSON."""
    given = attribute if attribute is not None else header
    if given is None:
        return CONTENT_TYPE
    media, *parameters = (part.strip().lower() for part in given.split(";"))
    if media != CONTENT_TYPE or any(p.replace(" ", "") != "charset=utf-8" for p in parameters):
        where = "header ce-datacontenttype" if attribute is not None else "header Content-Type"
        raise InvalidEvent(
            f"datacontenttype must be {CONTENT_TYPE}: binary mode carries JSON data only, got {given[:80]!r} ({where})"
        )
    if attribute is not None and header is not None and header.strip().lower() != attribute.strip().lower():
        raise InvalidEvent(f"header ce-datacontenttype {attribute[:80]!r} and Content-Type {header[:80]!r} disagree")
    return CONTENT_TYPE
