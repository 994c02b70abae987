"""The outbound publisher: an activity that announces a run's domain events on the bus exactly once.

The event id, and so the JetStream ``Nats-Msg-Id``, is derived from the workflow id and the step, so a retried
activity (or a replayed workflow) publishes a duplicate that JetStream drops within the duplicate window.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from events.catalog import OUTBOUND
from events.connection import LazyConnection
from events.dead_letters import wire_size
from events.envelope import describe, new_event

SOURCE = "quantum-suite"
PUBLISHED = Counter("quantum_events_published_total", "Outbound events published", ["type", "duplicate"])


class PublishEventInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    data: dict[str, Any]
    workflow_id: str
    step: str = Field(description="Unique within the run: the event id is <workflow id>.<step>.")


class PublishedEvent(BaseModel):
    id: str
    subject: str
    stream_sequence: int
    duplicate: bool


_PLAIN_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,150}$")
_PLAIN_STEP = re.compile(r"^[a-z0-9_.]{1,80}$")


def event_id(workflow_id: str, step: str) -> str:
    """The id of a run's outbound event for ``step``: distinct for every distinct (run, step) pair.

    A plain run id (letters, digits, ``_``, ``-``) gives ``<run id>.<step>``; any other gives
    ``<run id made plain>:<digest of run id and step>.<step>``. The first kind has no ``:`` before its first ``.``
    and the second has, so the two never meet; and two runs whose ids read alike once made plain (``coll:2`` and
    ``coll_2``) differ by the digest, so neither's events are dropped as duplicates of the other's.
    """
    if _PLAIN_RUN_ID.match(workflow_id) and _PLAIN_STEP.match(step):
        return f"{workflow_id}.{step}"
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", workflow_id)[:100]
    digest = hashlib.sha256(f"{workflow_id}\x00{step}".encode(errors="surrogatepass")).hexdigest()[:24]
    return f"{readable}:{digest}.{re.sub(r'[^A-Za-z0-9_.-]', '_', step)[:80]}"


class EventPublisher:
    """Publishes outbound CloudEvents to JetStream over one NATS connection, opened on first use."""

    def __init__(self, nats_url: str, *, source: str = SOURCE, credentials: str | None = None) -> None:
        self.nats_url = nats_url
        self.source = source
        self._connection = LazyConnection(nats_url, credentials=credentials)

    @activity.defn(name="events.publish")
    async def publish(self, inp: PublishEventInput) -> PublishedEvent:
        kind = OUTBOUND.get(inp.type)
        if kind is None:
            raise ApplicationError(
                f"{inp.type!r} is not an outbound event type", type="InvalidEvent", non_retryable=True
            )
        try:
            data = kind.data.model_validate(inp.data)
        except ValidationError as err:
            raise ApplicationError(f"{inp.type}: {describe(err)}", type="InvalidEvent", non_retryable=True) from None
        event = new_event(
            inp.type, data, source=self.source, event_id=event_id(inp.workflow_id, inp.step), subject=inp.workflow_id
        )
        nc = await self._connection.get()
        raw, headers = event.to_bytes(), {"Nats-Msg-Id": event.id}
        size = wire_size(raw, headers)
        if size > nc.max_payload:  # the server would drop the connection, not refuse the message
            raise ApplicationError(
                f"{inp.type} is {size} bytes with its headers, over the server's {nc.max_payload}",
                type="InvalidEvent",
                non_retryable=True,
            )
        ack = await nc.jetstream().publish(event.nats_subject, raw, headers=headers, timeout=10)
        PUBLISHED.labels(inp.type, str(bool(ack.duplicate)).lower()).inc()
        return PublishedEvent(
            id=event.id, subject=event.nats_subject, stream_sequence=ack.seq, duplicate=bool(ack.duplicate)
        )

    @activity.defn(name="events.publish_all")
    async def publish_all(self, inputs: list[PublishEventInput]) -> list[PublishedEvent]:
        """Publish ``inputs`` in order. An event that can never be published (``InvalidEvent``) does not keep the
        others from the bus: the rest are published, then the refusal is raised, naming each."""
        published, refused = [], []
        for inp in inputs:
            try:
                published.append(await self.publish(inp))
            except ApplicationError as err:
                if err.type != "InvalidEvent":
                    raise
                refused.append(f"{inp.step}: {err.message}")
        if refused:
            raise ApplicationError("; ".join(refused), type="InvalidEvent", non_retryable=True)
        return published

    async def close(self) -> None:
        await self._connection.close()

    def activities(self) -> list[Callable[..., Any]]:
        return [self.publish, self.publish_all]
