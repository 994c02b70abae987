"""What the CLI does on the bus: publish events, follow them, and look after the dead letters."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from events.catalog import INBOUND, inbound_data
from events.dead_letters import (
    ORIGINAL_DIGEST_HEADER,
    ORIGINAL_SEQUENCE_HEADER,
    ORIGINAL_SIZE_HEADER,
    ORIGINAL_STREAM_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    PARTIAL_HEADER,
    REASON_HEADER,
    wire_size,
)
from events.envelope import (
    SUBJECT_PREFIX,
    CloudEvent,
    EventError,
    MalformedEvent,
    load_json,
    parse_envelope,
    subject_for,
)
from events.streams import DLQ_STREAM, DLQ_SUBJECTS, EVENTS_STREAM

DEFAULT_PAGE = 100
"""How many dead letters one call of :func:`dead_letters` reads at most, unless told otherwise."""
INBOUND_SUBJECTS = frozenset(subject_for(t) for t in INBOUND)
_EVENT_TYPE = re.compile(r"^quantum\.([a-z_]+|\*)\.([a-z_]+|\*)$")


class BusError(RuntimeError):
    """A bus operation that cannot be done; the message says why."""


async def publish_event(nc: NATS, event: CloudEvent, *, max_bytes: int) -> int:
    """Check ``event`` as the bridge will, then publish it; returns its stream sequence."""
    raw = event.to_bytes()
    try:
        parse_envelope(raw, max_bytes=max_bytes)
        if event.type in INBOUND:
            inbound_data(event)
    except EventError as err:
        raise BusError(f"{err.kind}: {err.reason}") from None
    headers = {"Nats-Msg-Id": event.id}
    _check_fits(nc, raw, headers, f"event {event.id}")
    ack = await nc.jetstream().publish(event.nats_subject, raw, headers=headers, timeout=10)
    if ack.duplicate:
        raise BusError(f"event {event.id} was already published (same id within the duplicate window)")
    return int(ack.seq)


def _check_fits(nc: NATS, payload: bytes, headers: dict[str, str], what: str) -> None:
    """Refuse a message the server would answer by closing the connection (``max_payload`` counts headers)."""
    size = wire_size(payload, headers)
    if size > nc.max_payload:
        raise BusError(f"{what} is {size} bytes with its headers, over the server's limit of {nc.max_payload}")


@dataclass(frozen=True)
class Letter:
    """One dead letter.

    Attributes:
        sequence: Its sequence in ``QUANTUM_DLQ``.
        time: When it was dead-lettered.
        reason: Why.
        subject: The subject the original arrived on.
        original_sequence: The original's sequence in ``QUANTUM_EVENTS``.
        data: The original bytes; only their start when ``partial``.
        partial: The original was too large to copy whole; it stays in ``QUANTUM_EVENTS`` until its max age.
        original_size: The original's size in bytes, when the letter says.
    """

    sequence: int
    time: datetime | None
    reason: str
    subject: str
    original_sequence: str
    data: bytes
    partial: bool = False
    original_size: int | None = None


async def dead_letters(nc: NATS, *, after: int = 0, limit: int = DEFAULT_PAGE) -> list[Letter]:
    """The dead letters after DLQ sequence ``after``, ``limit`` of them at most, oldest first.

    Reads one letter at a time (each at most one NATS message), skipping the ones already replayed, so a large DLQ
    is read a page at a time: pass the last sequence of one page as ``after`` for the next.
    """
    js = nc.jetstream()
    letters: list[Letter] = []
    next_sequence = after + 1
    while len(letters) < limit:
        try:
            msg = await js.get_msg(DLQ_STREAM, seq=max(1, next_sequence), subject=DLQ_SUBJECTS, next=True)
        except NotFoundError:  # no more
            break
        found = msg.seq or next_sequence
        next_sequence = found + 1
        headers = msg.headers or {}
        letters.append(
            Letter(
                sequence=found,
                time=msg.time if isinstance(msg.time, datetime) else None,
                reason=headers.get(REASON_HEADER, ""),
                subject=headers.get(ORIGINAL_SUBJECT_HEADER, ""),
                original_sequence=headers.get(ORIGINAL_SEQUENCE_HEADER, ""),
                data=msg.data or b"",
                partial=PARTIAL_HEADER in headers,
                original_size=_number(headers.get(ORIGINAL_SIZE_HEADER)),
            )
        )
    return letters


async def replay_dead_letter(nc: NATS, sequence: int) -> str:
    """Publish a dead letter's original bytes again on its original subject, then remove it from the DLQ.

    A partial letter (its original was too large to copy whole) is replayed from the original, fetched from
    ``QUANTUM_EVENTS`` by its sequence and checked against the letter's digest. Only an inbound event subject is
    replayed to: a letter is only as trustworthy as whoever could publish to the DLQ.

    The replay gets a message id of its own (the original id may still be inside the duplicate window); the event
    id inside, and so the workflow id, stays the same.
    """
    js = nc.jetstream()
    try:
        msg = await js.get_msg(DLQ_STREAM, sequence)
    except NotFoundError:
        raise BusError(f"no dead letter with sequence {sequence}; see `quantum dlq list`") from None
    headers = msg.headers or {}
    subject = str(headers.get(ORIGINAL_SUBJECT_HEADER) or "")
    if not subject:
        raise BusError(f"dead letter {sequence} does not say where it came from")
    if subject not in INBOUND_SUBJECTS:
        raise BusError(f"dead letter {sequence} names {subject[:200]!r}, which is not an inbound event subject")
    data = await _original(nc, sequence, headers, subject) if PARTIAL_HEADER in headers else (msg.data or b"")
    replay_headers = {"Nats-Msg-Id": f"replay-{sequence}-{uuid.uuid4()}"}
    _check_fits(nc, data, replay_headers, f"the original of dead letter {sequence}")
    await js.publish(subject, data, headers=replay_headers, timeout=10)
    await js.delete_msg(DLQ_STREAM, sequence)
    return subject


async def _original(nc: NATS, sequence: int, headers: dict[str, str], subject: str) -> bytes:
    """The original of a partial dead letter, from ``QUANTUM_EVENTS``; a :class:`BusError` when it is gone."""
    stream = headers.get(ORIGINAL_STREAM_HEADER, EVENTS_STREAM)
    original_sequence = _number(headers.get(ORIGINAL_SEQUENCE_HEADER))
    if stream != EVENTS_STREAM or not original_sequence:
        raise BusError(f"dead letter {sequence} is partial and does not say where in {EVENTS_STREAM} its original is")
    where = f"{EVENTS_STREAM} sequence {original_sequence}"
    try:
        original = await nc.jetstream().get_msg(EVENTS_STREAM, original_sequence)
    except NotFoundError:
        raise BusError(
            f"dead letter {sequence} keeps only the start of its event, and the original ({where}) is gone: "
            f"{EVENTS_STREAM} keeps events for its max age, and within its byte limit"
        ) from None
    data = original.data or b""
    if original.subject != subject or hashlib.sha256(data).hexdigest() != headers.get(ORIGINAL_DIGEST_HEADER):
        raise BusError(
            f"dead letter {sequence} keeps only the start of its event, and {where} is another message "
            "(the stream was created again since)"
        )
    return data


def _number(header: str | None) -> int | None:
    """A header holding a decimal number (ASCII digits only, as the bridge writes them), or None."""
    if header and header.isascii() and header.isdigit() and len(header) <= 20:
        return int(header)
    return None


def _as_event(raw: bytes) -> dict[str, Any]:
    """A message of ``QUANTUM_EVENTS`` as a dict with a string ``type`` and an object ``data``, or as malformed."""
    try:
        obj = load_json(raw)
    except MalformedEvent as err:
        problem = err.reason
    else:
        if not isinstance(obj, dict):
            problem = f"a CloudEvent is a JSON object, not {type(obj).__name__}"
        elif not isinstance(obj.get("type"), str):
            problem = "the event has no string type"
        elif not isinstance(obj.get("data", {}), dict):
            problem = "the event's data is not a JSON object"
        else:
            return obj
    return {"type": "(malformed)", "data": {"raw": raw[:200].decode(errors="replace"), "problem": problem}}


async def tail(
    nc: NATS, *, event_type: str | None = None, from_start: bool = False
) -> AsyncGenerator[dict[str, Any], None]:
    """Events as they arrive on ``QUANTUM_EVENTS`` (an ordered, ephemeral consumer).

    Each is a dict whose ``type`` is a string and whose ``data``, when present, is a dict; anything else (not JSON,
    nested too deeply, another JSON value, a body of another shape) comes as ``{"type": "(malformed)", "data":
    {"raw": <its first 200 bytes as text>, "problem": <what is wrong>}}``.

    Args:
        nc: The connection.
        event_type: Only events of this type (``quantum.`` may be left out; ``*`` stands for any noun or verb).
        from_start: From the start of the stream rather than only new events.

    Raises:
        BusError: ``event_type`` is not an event type.
    """
    subject = SUBJECT_PREFIX + ">"
    if event_type:
        name = event_type if event_type.startswith("quantum.") else f"quantum.{event_type}"
        if not _EVENT_TYPE.match(name):
            raise BusError(f"{event_type[:100]!r} is not an event type (quantum.<noun>.<verb>)")
        subject = subject_for(name)
    js = nc.jetstream()
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW)
    sub = await js.subscribe(subject, stream=EVENTS_STREAM, ordered_consumer=True, config=config)
    try:
        async for msg in sub.messages:
            yield _as_event(msg.data)
    finally:
        await sub.unsubscribe()
