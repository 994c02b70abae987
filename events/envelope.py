"""The CloudEvents 1.0 envelope in JSON structured mode, and parsing that says exactly what is wrong.

Error tree (``EventError.reason`` is what the dead-letter header carries)::

    EventError
    ├── MalformedEvent      the bytes are not a JSON object
    ├── WrongSpecVersion    ``specversion`` is not "1.0"
    ├── UnknownEventType    ``type`` is not one this product accepts
    ├── InvalidEvent        a required attribute or a field of ``data`` is missing or invalid
    └── EventTooLarge       the payload is over the configured size
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
SUBJECT_PREFIX = "quantum.events."
DLQ_SUBJECT = "quantum.dlq.events"


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


def subject_for(event_type: str) -> str:
    """``quantum.<noun>.<verb>`` travels on ``quantum.events.<noun>.<verb>``."""
    return SUBJECT_PREFIX + event_type.removeprefix("quantum.")


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


def describe(err: ValidationError, prefix: str = "") -> str:
    return "; ".join(
        f"{prefix}{'.'.join(str(p) for p in problem['loc']) or '(event)'}: {problem['msg']}" for problem in err.errors()
    )


def parse_envelope(raw: bytes, *, max_bytes: int) -> CloudEvent:
    """Parse ``raw`` as a CloudEvent, raising the :class:`EventError` that names what is wrong."""
    if len(raw) > max_bytes:
        raise EventTooLarge(f"payload is {len(raw)} bytes, over the {max_bytes} byte limit")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MalformedEvent(f"not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise MalformedEvent(f"a CloudEvent is a JSON object, not {type(obj).__name__}")
    if obj.get("specversion") != SPEC_VERSION:
        raise WrongSpecVersion(f"specversion must be {SPEC_VERSION!r}, got {obj.get('specversion')!r}")
    try:
        return CloudEvent.model_validate(obj)
    except ValidationError as err:
        raise InvalidEvent(describe(err)) from None
