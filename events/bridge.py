"""The inbound bridge: a durable pull consumer that turns inbound CloudEvents into workflow starts and signals.

Each message is validated, routed by type, acted on, and only then acknowledged:

* ``quantum.pipeline.requested`` / ``code.requested`` / ``infra.requested`` start their workflow with the id
  ``<prefix>-<event id>`` under ``REJECT_DUPLICATE``: a duplicated or redelivered event finds the run already
  started and is acknowledged without a second run.
* ``quantum.review.submitted`` becomes the ``review`` Update (the signal for a run from before it): a review the
  run's rules refuse never reaches its history and goes to the dead letters with the run's reason;
  ``quantum.pipeline.cancel_requested`` cancels.
* An event that cannot be used goes to ``QUANTUM_DLQ`` with a header naming the reason, and is terminated: bytes
  that are not a JSON object in UTF-8 or nest deeper than ``MAX_NESTING``, a wrong ``specversion``, an unknown
  type, a type other than the one of the subject it arrived on (permissions are granted per subject), a missing or
  invalid field, too large, a run that does not exist.
* Temporal unreachable: the message is negatively acknowledged with a growing delay and the bridge backs off;
  nothing is lost, and the events start when Temporal is back. Only this backs the whole bridge off.
* Anything else that goes wrong with one message (a bug, a failure nobody foresaw) is retried after a short delay,
  ``failure_attempts`` times in all, then dead-lettered with the exception's type and message; the other messages
  carry on meanwhile.
* The last delivery ``max_deliver`` allows is kept for dead-lettering: a message delivered that often (even one
  that ended the bridge process on each delivery) is dead-lettered without another attempt, with a reason that
  says how many deliveries failed and, when this process saw it, the last error.

A dead letter carries the original bytes when they fit in one NATS message with its headers (``max_payload``
counts headers and body). When they do not, it carries the first :data:`EXCERPT_BYTES` with the header
``Quantum-Dlq-Partial`` (and the original's size and SHA-256), and the original stays in ``QUANTUM_EVENTS``
(terminating a message does not delete it) under the sequence in ``Quantum-Original-Sequence``, until the stream's
max age or byte limit removes it; ``quantum dlq replay`` fetches it from there. Every header value the bridge
writes is made safe first (:func:`header_value`): no control characters, bounded length, since a reason can hold
text from an event or from Temporal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from events.catalog import INBOUND, CancelRequested, EventType, ReviewSubmitted, inbound_data, workflow_id
from events.dead_letters import (
    PARTIAL_HEADER,
    REASON_HEADER,
    dead_letter_copy,
    header_value,
    reason_kind,
)
from events.envelope import (
    DLQ_SUBJECT,
    SUBJECT_PREFIX,
    CloudEvent,
    EventError,
    check_subject,
    parse_envelope,
    subject_for,
)
from events.models import REVIEW_REFUSED
from events.streams import EVENTS_STREAM

log = logging.getLogger(__name__)

_REMEMBERED = 10_000  # messages whose failures the bridge remembers at once; the oldest are forgotten first

EVENTS = Counter("quantum_bridge_events_total", "Inbound events by type and outcome", ["type", "outcome"])
START_LATENCY = Histogram(
    "quantum_bridge_start_latency_seconds",
    "From an event's arrival in the stream to its workflow start",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DEAD_LETTERS = Counter("quantum_bridge_dead_letters_total", "Inbound events dead-lettered, by reason", ["reason"])
REDELIVERIES = Counter("quantum_bridge_redeliveries_total", "Inbound events delivered more than once")
LAG = Gauge("quantum_bridge_lag_seconds", "Age of the oldest inbound event not yet acknowledged (0 when none waits)")
PENDING = Gauge("quantum_bridge_pending_events", "Inbound events not yet acknowledged (waiting or in flight)")
LAG_INTERVAL_SECONDS = 5.0
FETCH_RETRY_SECONDS = 1.0
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
    """What became of one message."""

    STARTED = "started"
    DUPLICATE = "duplicate"
    SIGNALLED = "signalled"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"
    RETRY = "retry"
    """Temporal cannot take the call now: retried later, and the bridge backs off."""
    FAILED = "failed"
    """This message failed for another reason (or could not be dead-lettered): retried later, nobody backs off."""


@dataclass(frozen=True)
class BridgeConfig:
    """How the bridge consumes; the application fills it from settings.

    Attributes:
        task_queue: Where the started workflows run.
        consumer: The durable consumer's name.
        batch: Messages fetched (and handled concurrently) at once.
        max_deliver: Deliveries of one message; the last is kept for dead-lettering it, so at least 2.
        ack_wait_seconds: How long a delivered message may stay unsettled before it is delivered again.
        max_event_bytes: Larger events are dead-lettered.
        retry_delays: Growing delays between deliveries of a message (and of the bridge's back-off).
        failure_attempts: Deliveries of a message that fail unexpectedly before it is dead-lettered.
        rpc_timeout_seconds: The limit of each Temporal call.
        stream: The stream consumed (a benchmark on a shared bus uses one of its own).
        subject_prefix: What an event's subject is its type's ``<noun>.<verb>`` after (see ``subject_for``).
        inbound_subjects: The subjects consumed; by default, those of the inbound types after ``subject_prefix``.
    """

    task_queue: str = "quantum-workflows"
    consumer: str = "quantum-bridge"
    batch: int = 64
    max_deliver: int = 20
    ack_wait_seconds: float = 30.0
    max_event_bytes: int = 256 * 1024
    retry_delays: tuple[float, ...] = (0.5, 1, 2, 4, 8, 15)
    failure_attempts: int = 3
    rpc_timeout_seconds: float = 5.0
    stream: str = EVENTS_STREAM
    subject_prefix: str = SUBJECT_PREFIX
    inbound_subjects: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_deliver < 2:
            raise ValueError("max_deliver must be at least 2: the last delivery is kept for dead-lettering")
        if self.failure_attempts < 1:
            raise ValueError("failure_attempts must be at least 1")
        if not self.retry_delays:
            raise ValueError("retry_delays must name at least one delay")
        if not self.inbound_subjects:
            subjects = tuple(subject_for(t, self.subject_prefix) for t in INBOUND)
            object.__setattr__(self, "inbound_subjects", subjects)


class TemporalUnavailable(Exception):
    """Temporal cannot take the call now; the message is retried later."""


class DeadLetter(Exception):
    """Temporal refused the call for good (no such run, an invalid request): the message is dead-lettered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Failures:
    """What went wrong with the messages still being retried, by stream sequence; bounded, oldest forgotten first."""

    def __init__(self, size: int = _REMEMBERED) -> None:
        self._size = size
        self._seen: OrderedDict[int, tuple[int, str]] = OrderedDict()

    def record(self, sequence: int, error: str, *, unexpected: bool) -> int:
        """Remember ``error`` as the last of ``sequence``; returns how many unexpected failures it has had."""
        count, _ = self._seen.pop(sequence, (0, ""))
        count += int(unexpected)
        self._seen[sequence] = (count, error)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return count

    def last_error(self, sequence: int) -> str | None:
        entry = self._seen.get(sequence)
        return entry[1] if entry else None

    def forget(self, sequence: int) -> None:
        self._seen.pop(sequence, None)


class Bridge:
    """Consumes ``QUANTUM_EVENTS`` (or the stream its configuration names) with a durable pull consumer and acts on
    each inbound event."""

    def __init__(self, nc: NATS, temporal: Client, config: BridgeConfig | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.temporal = temporal
        self.config = config or BridgeConfig()
        self._failures = 0
        self._resume_at = 0.0
        self._message_failures = _Failures()
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
            await self.js.add_consumer(c.stream, consumer)
        except BadRequestError:
            await self.js.add_consumer(c.stream, consumer)  # an update of an existing durable

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Fetch and handle messages until ``stop`` is set (or the task is cancelled).

        Up to ``batch`` messages are in hand at once, and a fetch asks for as many as have been settled, so one slow
        start does not hold back the messages behind it. A message that Temporal could not take pauses fetching
        (:meth:`_back_off`); the messages already in hand go on meanwhile. On ``stop``, the messages in hand are
        finished and settled before it returns.
        """
        stop = stop or asyncio.Event()
        await self.ensure_consumer()
        sub = await self.js.pull_subscribe_bind(durable=self.config.consumer, stream=self.config.stream)
        log.info("bridge consuming %s as %s", self.config.stream, self.config.consumer)
        watcher = asyncio.create_task(self._watch_lag(stop))
        in_hand: set[asyncio.Task[Outcome]] = set()
        clock = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self._settle(in_hand)
                paused = self._resume_at - clock.time()
                if paused > 0 or len(in_hand) >= self.config.batch:
                    if in_hand:
                        timeout = paused if paused > 0 else None
                        await asyncio.wait(in_hand, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    else:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), paused)
                    continue
                try:
                    msgs = await sub.fetch(self.config.batch - len(in_hand), timeout=1)
                except (TimeoutError, NatsTimeoutError):
                    continue
                except NatsError as err:  # the bus away for a moment: a server restarting, a leader being elected
                    log.warning("fetching failed (%s: %s); trying again", type(err).__name__, err)
                    self._back_off(FETCH_RETRY_SECONDS)
                    continue
                in_hand.update(asyncio.create_task(self._held(msg)) for msg in msgs)
        except asyncio.CancelledError:
            for task in in_hand:
                task.cancel()
            raise
        finally:
            watcher.cancel()
            if in_hand:
                await asyncio.gather(*in_hand, return_exceptions=True)
            await sub.unsubscribe()

    async def _held(self, msg: Msg) -> Outcome:
        """Handle ``msg``, telling JetStream every half ``ack_wait`` that it is in progress: a slow start (Temporal
        retrying a call) is not delivered again, to this bridge or another, while it is in hand."""
        keeper = asyncio.create_task(self._keep_in_progress(msg))
        try:
            return await self.handle(msg)
        finally:
            keeper.cancel()

    async def _keep_in_progress(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.config.ack_wait_seconds / 2)
            try:
                await msg.in_progress()
            except Exception as err:  # the connection going: the message is delivered again after ack_wait
                log.debug("cannot mark message %s in progress: %s", _sequence(msg), err)
                return

    def _settle(self, in_hand: set[asyncio.Task[Outcome]]) -> None:
        """Take the handled messages out of ``in_hand``. One that Temporal could not take pauses fetching, unless a
        pause is already running: the messages of one burst of failures (all in hand when Temporal went away) back
        the bridge off once, not once each. A message that Temporal took after a pause ended ends the back-off."""
        done = {task for task in in_hand if task.done()}
        if not done:
            return
        in_hand.difference_update(done)
        outcomes = []
        for task in done:
            if task.cancelled():  # a handler that ended the bridge's work, as the process ending would
                raise asyncio.CancelledError
            if (error := task.exception()) is not None:  # left unsettled: delivered again after the ack wait
                log.error("handling a message failed: %s: %s", type(error).__name__, error)
                continue
            outcomes.append(task.result())
        pausing = asyncio.get_running_loop().time() < self._resume_at
        if Outcome.RETRY in outcomes:
            if not pausing:
                self._failures += 1
                self._back_off(self._delay())
        elif outcomes and not pausing:
            self._failures = 0

    def _back_off(self, seconds: float) -> None:
        """Fetch nothing for ``seconds`` (Temporal cannot take calls, or the bus is away)."""
        self._resume_at = asyncio.get_running_loop().time() + seconds

    async def lag(self) -> tuple[float, int]:
        """How old the oldest unacknowledged inbound event is (seconds) and how many wait or are in flight.

        Every message at or below the consumer's ack floor is settled, so the first inbound message after it is
        the oldest one not yet acknowledged.
        """
        info = await self.js.consumer_info(self.config.stream, self.config.consumer)
        waiting = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        if not waiting:
            return 0.0, 0
        after = int(info.ack_floor.stream_seq or 0) + 1 if info.ack_floor else 1
        oldest: float | None = None
        for subject in self.config.inbound_subjects:
            try:
                found = await self.js.get_msg(self.config.stream, seq=after, subject=subject, next=True)
            except NotFoundError:
                continue
            if found.time is not None:
                stamp = found.time.timestamp()
                oldest = stamp if oldest is None else min(oldest, stamp)
        return (max(0.0, time.time() - oldest) if oldest is not None else 0.0), waiting

    async def _watch_lag(self, stop: asyncio.Event) -> None:
        """Keep the lag gauges current while the bridge runs; a failed look leaves them as they were."""
        while not stop.is_set():
            try:
                seconds, waiting = await self.lag()
                LAG.set(seconds)
                PENDING.set(waiting)
            except Exception as err:  # the bus away for a moment: the next look tries again
                log.debug("cannot read the bridge's lag: %s", err)
            await asyncio.sleep(LAG_INTERVAL_SECONDS)

    def _delay(self) -> float:
        delays = self.config.retry_delays
        return delays[min(self._failures, len(delays)) - 1] if self._failures else delays[0]

    async def handle(self, msg: Msg) -> Outcome:
        """Act on one message and settle it: ack, term after dead-lettering, or nak for a later retry.

        Never raises for anything one message holds; a message that cannot even be settled (the connection is
        going) is delivered again after ``ack_wait``.
        """
        event_type = "unparsed"
        try:
            outcome, event_type = await self._handle(msg)
        except Exception as err:  # settling failed: nothing more to do with this message now
            log.warning("cannot settle message %s: %s", _sequence(msg), header_value(f"{type(err).__name__}: {err}"))
            outcome = Outcome.FAILED
        EVENTS.labels(event_type, outcome.value).inc()
        return outcome

    async def _handle(self, msg: Msg) -> tuple[Outcome, str]:
        meta = msg.metadata
        sequence = meta.sequence.stream
        if meta.num_delivered > 1:
            REDELIVERIES.inc()
        if meta.num_delivered >= self.config.max_deliver:
            last = self._message_failures.last_error(sequence) or (
                "none seen by this bridge process (a delivery may have ended the process)"
            )
            reason = (
                f"DeliveriesExhausted: {meta.num_delivered} deliveries, the last kept for dead-lettering; "
                f"{meta.num_delivered - 1} failed; last error: {last}"
            )
            return await self._dead_letter(msg, reason, final=True), "unparsed"
        event_type = "unparsed"
        try:
            event = parse_envelope(msg.data, max_bytes=self.config.max_event_bytes, headers=msg.headers)
            event_type = event.type if event.type in INBOUND else "unknown"  # a bounded set of metric labels
            if event.type in INBOUND:
                check_subject(event, msg.subject, self.config.subject_prefix)
            kind, data = inbound_data(event)
            outcome = await self._act(kind, event, data)
        except EventError as err:
            return await self._dead_letter(msg, f"{err.kind}: {err.reason}"), event_type
        except DeadLetter as err:
            return await self._dead_letter(msg, err.reason), event_type
        except TemporalUnavailable as err:
            self._message_failures.record(sequence, f"TemporalUnavailable: {err}", unexpected=False)
            await msg.nak(delay=self._retry_delay(meta.num_delivered))
            return Outcome.RETRY, event_type
        except Exception as err:  # a bug or a failure nobody foresaw: this message alone is retried, then refused
            error = f"{type(err).__name__}: {err}"
            failures = self._message_failures.record(sequence, error, unexpected=True)
            log.exception("unexpected failure %d of message %s", failures, sequence)
            if failures >= self.config.failure_attempts:
                reason = f"UnexpectedFailure: {failures} deliveries failed; last error: {error}"
                return await self._dead_letter(msg, reason), event_type
            await msg.nak(delay=self._retry_delay(failures))
            return Outcome.FAILED, event_type
        self._message_failures.forget(sequence)
        self._observe(msg, outcome)
        await msg.ack()
        return outcome, event_type

    def _retry_delay(self, attempt: int) -> float:
        delays = self.config.retry_delays
        return delays[max(1, min(attempt, len(delays))) - 1]

    @staticmethod
    def _observe(msg: Msg, outcome: Outcome) -> None:
        if outcome is Outcome.STARTED and msg.metadata.timestamp:
            START_LATENCY.observe(max(0.0, time.time() - msg.metadata.timestamp.timestamp()))

    async def _act(self, kind: EventType, event: CloudEvent, data: BaseModel) -> Outcome:
        try:
            if isinstance(data, ReviewSubmitted):
                return await self._review(data)
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
        except (RecursionError, NotImplementedError):  # RuntimeErrors about the call itself, not about reaching it
            raise
        except RuntimeError as err:  # the client could not reach the server at all
            raise TemporalUnavailable(str(err)) from None

    async def _review(self, data: ReviewSubmitted) -> Outcome:
        """Send the review as the ``review`` Update: one the run refuses never reaches its history and goes to the
        dead letters with the run's reason. A run from before the Update gets the signal (the same rules)."""
        handle = self._handle_for(data.pipeline_id)
        decision = data.decision()
        try:
            await handle.execute_update("review", decision, rpc_timeout=self._rpc_timeout)
            return Outcome.SIGNALLED
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == REVIEW_REFUSED:
                raise DeadLetter(f"{REVIEW_REFUSED}: {cause.message}") from None
        await handle.signal("review", decision, rpc_timeout=self._rpc_timeout)
        return Outcome.SIGNALLED

    def _handle_for(self, pipeline_id: str) -> WorkflowHandle[Any, Any]:
        return self.temporal.get_workflow_handle(pipeline_id)

    async def _dead_letter(self, msg: Msg, reason: str, *, final: bool = False) -> Outcome:
        """Publish the dead letter of ``msg`` (whole, or partial when too large), then terminate the message.

        When the DLQ cannot be reached the message is delivered again later; on its ``final`` delivery, when no
        later delivery will come, the publish is tried a few times before the bridge gives up on it, logging
        where the original stays.
        """
        meta = msg.metadata
        sequence = meta.sequence.stream
        try:
            body, headers = dead_letter_copy(
                msg.data,
                subject=msg.subject,
                stream=meta.stream,
                sequence=sequence,
                reason=reason,
                max_payload=self.nc.max_payload,
            )
        except ValueError as err:  # a server that takes messages of a few KiB at most
            log.error("cannot dead-letter message %s of %s: %s", sequence, meta.stream, err)
            if not final:
                await msg.nak(delay=self.config.retry_delays[-1])
            return Outcome.FAILED
        attempts = 3 if final else 1
        for attempt in range(1, attempts + 1):
            try:
                await self.js.publish(DLQ_SUBJECT, body, headers=headers, timeout=10)
                break
            except Exception as err:  # the DLQ is unreachable: keep the message where it is
                problem = header_value(f"{type(err).__name__}: {err}")
                if attempt < attempts:
                    await asyncio.sleep(self._retry_delay(attempt))
                    continue
                if final:
                    log.error(
                        "message %s of %s cannot be dead-lettered (%s) and will not be delivered again; "
                        "it stays in the stream until its max age",
                        sequence,
                        meta.stream,
                        problem,
                    )
                    return Outcome.FAILED
                log.warning("cannot dead-letter message %s (%s); it will be delivered again", sequence, problem)
                await msg.nak(delay=self.config.retry_delays[-1])
                return Outcome.FAILED
        await msg.term()
        DEAD_LETTERS.labels(reason_kind(reason)).inc()
        self._message_failures.forget(sequence)
        log.info(
            "dead-lettered message %s%s: %s",
            sequence,
            " (partially: too large to copy whole)" if PARTIAL_HEADER in headers else "",
            headers[REASON_HEADER],
        )
        return Outcome.DEAD_LETTERED


def _sequence(msg: Msg) -> str:
    try:
        return str(msg.metadata.sequence.stream)
    except Exception:  # not a JetStream message
        return "?"
