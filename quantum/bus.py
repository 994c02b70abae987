"""What the CLI does on the bus: publish events, follow them, and look after the dead letters."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from events.bridge import ORIGINAL_SEQUENCE_HEADER, ORIGINAL_SUBJECT_HEADER, REASON_HEADER
from events.catalog import INBOUND, inbound_data
from events.envelope import CloudEvent, EventError, parse_envelope
from events.streams import DLQ_STREAM, EVENTS_STREAM


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
    ack = await nc.jetstream().publish(event.nats_subject, raw, headers={"Nats-Msg-Id": event.id}, timeout=10)
    if ack.duplicate:
        raise BusError(f"event {event.id} was already published (same id within the duplicate window)")
    return int(ack.seq)


@dataclass(frozen=True)
class Letter:
    sequence: int
    time: datetime | None
    reason: str
    subject: str
    original_sequence: str
    data: bytes


async def dead_letters(nc: NATS) -> list[Letter]:
    js = nc.jetstream()
    info = await js.stream_info(DLQ_STREAM)
    letters: list[Letter] = []
    if not info.state.messages:
        return letters
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(DLQ_STREAM, seq)
        except NotFoundError:  # replayed and removed
            continue
        headers = msg.headers or {}
        letters.append(
            Letter(
                sequence=seq,
                time=msg.time if isinstance(msg.time, datetime) else None,
                reason=headers.get(REASON_HEADER, ""),
                subject=headers.get(ORIGINAL_SUBJECT_HEADER, ""),
                original_sequence=headers.get(ORIGINAL_SEQUENCE_HEADER, ""),
                data=msg.data or b"",
            )
        )
    return letters


async def replay_dead_letter(nc: NATS, sequence: int) -> str:
    """Publish a dead letter's original bytes again on its original subject, then remove it from the DLQ.

    The replay gets a message id of its own (the original id may still be inside the duplicate window); the event
    id inside, and so the workflow id, stays the same.
    """
    js = nc.jetstream()
    try:
        msg = await js.get_msg(DLQ_STREAM, sequence)
    except NotFoundError:
        raise BusError(f"no dead letter with sequence {sequence}; see `quantum dlq list`") from None
    subject: str | None = (msg.headers or {}).get(ORIGINAL_SUBJECT_HEADER)
    if not subject:
        raise BusError(f"dead letter {sequence} does not say where it came from")
    await js.publish(subject, msg.data or b"", headers={"Nats-Msg-Id": f"replay-{sequence}-{uuid.uuid4()}"})
    await js.delete_msg(DLQ_STREAM, sequence)
    return subject


async def tail(nc: NATS, *, event_type: str | None = None, from_start: bool = False) -> AsyncIterator[dict[str, Any]]:
    """Events as they arrive on ``QUANTUM_EVENTS`` (an ordered, ephemeral consumer); malformed ones as raw text."""
    subject = "quantum.events.>" if not event_type else "quantum.events." + event_type.removeprefix("quantum.")
    js = nc.jetstream()
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW)
    sub = await js.subscribe(subject, stream=EVENTS_STREAM, ordered_consumer=True, config=config)
    try:
        async for msg in sub.messages:
            try:
                yield json.loads(msg.data)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield {"type": "(malformed)", "data": {"raw": msg.data[:200].decode(errors="replace")}}
    finally:
        await sub.unsubscribe()
