"""The inbound bridge: a durable pull consumer that turns inbound CloudEvents into workflow starts and signals.

Each message is validated, routed by type, acted on, and only then acknowledged:

* ``quantum.pipeline.requested`` / ``code.requested`` / ``infra.requested`` start their workflow with the id
  ``<prefix>-<event id>`` under ``REJECT_DUPLICATE``: a duplicated or redelivered event finds the run already
  started and is acknowledged without a second run.
* ``quantum.review.submitted`` becomes the ``review`` signal; ``quantum.pipeline.cancel_requested`` cancels.
* An event that cannot be used (malformed JSON, wrong ``specversion``, unknown type, a missing or invalid field,
  too large, a run that does not exist) goes to ``QUANTUM_DLQ`` with its original bytes and a header naming the
  reason, and is terminated; so is one that exhausts its deliveries.
* Temporal unreachable: the message is negatively acknowledged with a growing delay and the bridge backs off;
  nothing is lost, and the events start when Temporal is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError
from prometheus_client import Counter, Histogram
from pydantic import BaseModel
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from events.catalog import INBOUND, CancelRequested, EventType, ReviewSubmitted, inbound_data, workflow_id
from events.envelope import DLQ_SUBJECT, CloudEvent, EventError, parse_envelope, subject_for
from events.streams import EVENTS_STREAM

log = logging.getLogger(__name__)

REASON_HEADER = "Quantum-Dlq-Reason"
ORIGINAL_SUBJECT_HEADER = "Quantum-Original-Subject"
ORIGINAL_SEQUENCE_HEADER = "Quantum-Original-Sequence"

EVENTS = Counter("quantum_bridge_events_total", "Inbound events by type and outcome", ["type", "outcome"])
START_LATENCY = Histogram(
    "quantum_bridge_publish_to_start_seconds",
    "From an event's arrival in the stream to its workflow start",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# Temporal answers these when it cannot take the call now; anything else is about the call itself
TRANSIENT = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
    RPCStatusCode.INTERNAL,
    RPCStatusCode.UNKNOWN,
    RPCStatusCode.CANCELLED,
}


class Outcome(StrEnum):
    STARTED = "started"
    DUPLICATE = "duplicate"
    SIGNALLED = "signalled"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"
    RETRY = "retry"


@dataclass(frozen=True)
class BridgeConfig:
    """How the bridge consumes; the application fills it from settings."""

    task_queue: str = "quantum-workflows"
    consumer: str = "quantum-bridge"
    batch: int = 64
    max_deliver: int = 20
    ack_wait_seconds: float = 30.0
    max_event_bytes: int = 256 * 1024
    retry_delays: tuple[float, ...] = (0.5, 1, 2, 4, 8, 15)
    rpc_timeout_seconds: float = 5.0
    inbound_subjects: tuple[str, ...] = field(default_factory=lambda: tuple(subject_for(t) for t in INBOUND))


class TemporalUnavailable(Exception):
    pass


class DeadLetter(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Bridge:
    """Consumes ``QUANTUM_EVENTS`` with a durable pull consumer and acts on each inbound event."""

    def __init__(self, nc: NATS, temporal: Client, config: BridgeConfig | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.temporal = temporal
        self.config = config or BridgeConfig()
        self._failures = 0
        self._rpc_timeout = timedelta(seconds=self.config.rpc_timeout_seconds)

    async def ensure_consumer(self) -> None:
        """Create the durable consumer, or bring it up to this configuration."""
        c = self.config
        consumer = ConsumerConfig(
            durable_name=c.consumer,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=list(c.inbound_subjects),
            max_deliver=c.max_deliver,
            ack_wait=c.ack_wait_seconds,
            max_ack_pending=max(1000, c.batch * 4),
        )
        try:
            await self.js.add_consumer(EVENTS_STREAM, consumer)
        except BadRequestError:
            await self.js.add_consumer(EVENTS_STREAM, consumer)  # an update of an existing durable

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Fetch and handle batches until ``stop`` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        await self.ensure_consumer()
        sub = await self.js.pull_subscribe_bind(durable=self.config.consumer, stream=EVENTS_STREAM)
        log.info("bridge consuming %s as %s", EVENTS_STREAM, self.config.consumer)
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self.config.batch, timeout=1)
                except (TimeoutError, NatsTimeoutError):
                    continue
                outcomes = await asyncio.gather(*(self.handle(msg) for msg in msgs))
                if Outcome.RETRY in outcomes:
                    self._failures += 1
                    await asyncio.sleep(self._delay())
                else:
                    self._failures = 0
        finally:
            await sub.unsubscribe()

    def _delay(self) -> float:
        delays = self.config.retry_delays
        return delays[min(self._failures, len(delays)) - 1] if self._failures else delays[0]

    async def handle(self, msg: Msg) -> Outcome:
        """Act on one message and settle it: ack, term after dead-lettering, or nak for a later retry."""
        event_type = "unparsed"
        try:
            event = parse_envelope(msg.data, max_bytes=self.config.max_event_bytes)
            event_type = event.type
            kind, data = inbound_data(event)
            outcome = await self._act(kind, event, data)
            self._observe(msg, outcome)
            await msg.ack()
        except EventError as err:
            outcome = await self._dead_letter(msg, f"{err.kind}: {err.reason}")
        except DeadLetter as err:
            outcome = await self._dead_letter(msg, err.reason)
        except TemporalUnavailable as err:
            if msg.metadata.num_delivered >= self.config.max_deliver:
                reason = f"DeliveriesExhausted: {msg.metadata.num_delivered} deliveries; last error: {err}"
                outcome = await self._dead_letter(msg, reason)
            else:
                await msg.nak(delay=self._retry_delay(msg))
                outcome = Outcome.RETRY
        except Exception:  # a bug or an outage we did not foresee: keep the event and keep running
            log.exception("unexpected failure handling message %s; it will be redelivered", msg.metadata.sequence)
            await msg.nak(delay=self._retry_delay(msg))
            outcome = Outcome.RETRY
        EVENTS.labels(event_type, outcome.value).inc()
        return outcome

    def _retry_delay(self, msg: Msg) -> float:
        delays = self.config.retry_delays
        return delays[min(msg.metadata.num_delivered, len(delays)) - 1]

    @staticmethod
    def _observe(msg: Msg, outcome: Outcome) -> None:
        if outcome is Outcome.STARTED and msg.metadata.timestamp:
            START_LATENCY.observe(max(0.0, time.time() - msg.metadata.timestamp.timestamp()))

    async def _act(self, kind: EventType, event: CloudEvent, data: BaseModel) -> Outcome:
        try:
            if isinstance(data, ReviewSubmitted):
                await self._handle_for(data.pipeline_id).signal(
                    "review", data.decision(), rpc_timeout=self._rpc_timeout
                )
                return Outcome.SIGNALLED
            if isinstance(data, CancelRequested):
                await self._handle_for(data.pipeline_id).cancel(rpc_timeout=self._rpc_timeout)
                return Outcome.CANCELLED
            assert kind.workflow is not None
            await self.temporal.start_workflow(
                kind.workflow,
                data,
                id=workflow_id(kind, event.id),
                task_queue=self.config.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                rpc_timeout=self._rpc_timeout,
            )
            return Outcome.STARTED
        except WorkflowAlreadyStartedError:
            return Outcome.DUPLICATE
        except RPCError as err:
            if err.status in TRANSIENT:
                raise TemporalUnavailable(f"{err.status.name}: {err.message}") from None
            if err.status == RPCStatusCode.NOT_FOUND:
                raise DeadLetter(f"RunNotFound: {err.message}") from None
            raise DeadLetter(f"Rejected by Temporal ({err.status.name}): {err.message}") from None
        except RuntimeError as err:  # the client could not reach the server at all
            raise TemporalUnavailable(str(err)) from None

    def _handle_for(self, pipeline_id: str) -> WorkflowHandle[Any, Any]:
        return self.temporal.get_workflow_handle(pipeline_id)

    async def _dead_letter(self, msg: Msg, reason: str) -> Outcome:
        """Keep the original bytes in the DLQ with the reason, then terminate the message."""
        meta = msg.metadata
        headers = {
            REASON_HEADER: reason[:1000],
            ORIGINAL_SUBJECT_HEADER: msg.subject,
            ORIGINAL_SEQUENCE_HEADER: str(meta.sequence.stream),
            "Nats-Msg-Id": f"dlq-{meta.stream}-{meta.sequence.stream}",
        }
        try:
            await self.js.publish(DLQ_SUBJECT, msg.data, headers=headers, timeout=10)
        except Exception as err:  # the DLQ is unreachable: keep the message where it is
            log.warning("cannot dead-letter message %s (%s); it will be redelivered", meta.sequence.stream, err)
            await msg.nak(delay=self.config.retry_delays[-1])
            return Outcome.RETRY
        await msg.term()
        log.info("dead-lettered message %s: %s", meta.sequence.stream, reason)
        return Outcome.DEAD_LETTERED
