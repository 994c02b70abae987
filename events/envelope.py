"""The CloudEvents 1.0 envelope in JSON structured mode, and parsing that says exactly what is wrong.

Error tree (``EventError.reason`` is what the dead-letter header carries)::

    EventError
    ├── MalformedEvent      the bytes are not a JSON object in UTF-8 (nor nested deeper than ``MAX_NESTING``)
    ├── WrongSpecVersion    ``specversion`` is not "1.0"
    ├── UnknownEventType    ``type`` is not one this product accepts
    ├── WrongSubject        the event arrived on a subject other than the one of its ``type``
    ├── InvalidEvent        a required attribute or a field of ``data`` is missing or invalid
    └── EventTooLarge       the payload is over the configured size

Reasons are built from the event's own text in places (a field's name, a validator's message): whoever puts a
reason into a header or a log line makes it safe there (``events.bridge.header_value``).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
SUBJECT_PREFIX = "quantum.events."
DLQ_SUBJECT = "quantum.dlq.events"
MAX_NESTING = 64
"""The deepest nesting of arrays and objects an event may have; the deepest event of the catalogue has 5."""
MAX_PROBLEMS = 10
"""How many validation problems a reason names before it says how many more there are."""


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


def parse_envelope(raw: bytes, *, max_bytes: int) -> CloudEvent:
    """Parse ``raw`` as a CloudEvent, raising the :class:`EventError` that names what is wrong."""
    if len(raw) > max_bytes:
        raise EventTooLarge(f"payload is {len(raw)} bytes, over the {max_bytes} byte limit")
    obj = load_json(raw)
    if not isinstance(obj, dict):
        raise MalformedEvent(f"a CloudEvent is a JSON object, not {type(obj).__name__}")
    if obj.get("specversion") != SPEC_VERSION:
        raise WrongSpecVersion(f"specversion must be {SPEC_VERSION!r}, got {repr(obj.get('specversion'))[:80]}")
    try:
        return CloudEvent.model_validate(obj)
    except ValidationError as err:
        raise InvalidEvent(describe(err)) from None
