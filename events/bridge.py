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
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
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

from events import signing
from events.bridge_config import (
    TRANSIENT,
    BridgeConfig,
    DeadLetter,
    Outcome,
    RunBusy,
    TemporalUnavailable,
    _Failures,
)
from events.catalog import INBOUND, CancelRequested, EventType, ReviewSubmitted, inbound_data, workflow_id
from events.dead_letters import (
    dead_letter,
    header_value,
    reason_kind,
)
from events.envelope import (
    CloudEvent,
    EventError,
    check_subject,
    parse_envelope,
)
from events.models import REVIEW_REFUSED, normalise_identity

__all__ = ["Bridge", "BridgeConfig", "DeadLetter", "Outcome", "RunBusy", "TemporalUnavailable"]

log = logging.getLogger(__name__)

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


class Bridge:
    """Consumes ``QUANTUM_EVENTS`` (or the stream its configuration names) with a durable pull consumer and acts on
    each inbound event."""

    def __init__(
        self,
        nc: NATS,
        temporal: Client,
        config: BridgeConfig | None = None,
        *,
        reviewer_keys: Mapping[str, bytes] | None = None,
        max_review_validity_seconds: float = 0.0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.temporal = temporal
        self.config = config or BridgeConfig()
        self.reviewer_keys = (
            None if reviewer_keys is None else {normalise_identity(k): v for k, v in reviewer_keys.items()}
        )
        self.max_review_validity_seconds = max_review_validity_seconds
        self._review_slots: dict[str, tuple[asyncio.Semaphore, int]] = {}
        self._failures = 0
        self._resume_at = 0.0
        self._message_failures = _Failures()
        self._rpc_timeout = timedelta(seconds=self.config.rpc_timeout_seconds)

    async def ensure_consumer(self) -> None:
        """Create the durable consumers (requests and reviews), or bring them up to this configuration."""
        for name, subjects in self.config.lanes().items():
            await self._ensure(name, subjects)

    async def _ensure(self, name: str, subjects: list[str]) -> None:
        c = self.config
        consumer = ConsumerConfig(
            durable_name=name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=subjects,
            max_deliver=c.max_deliver,
            ack_wait=c.ack_wait_seconds,
            max_ack_pending=max(1000, c.batch * 4),
        )
        if name == c.review_consumer:
            await self._start_reviews_where_requests_are(consumer)
        try:
            await self.js.add_consumer(c.stream, consumer)
        except BadRequestError:
            await self.js.add_consumer(c.stream, consumer)  # an update of an existing durable

    async def _start_reviews_where_requests_are(self, consumer: ConsumerConfig) -> None:
        """A review lane made beside a consumer that took reviews before starts after what that one settled, so no
        settled review is sent to its run again."""
        try:
            await self.js.consumer_info(self.config.stream, self.config.review_consumer)
            return
        except NotFoundError:
            pass
        try:
            before = await self.js.consumer_info(self.config.stream, self.config.consumer)
        except NotFoundError:
            return
        floor = int(before.ack_floor.stream_seq or 0) if before.ack_floor else 0
        if floor:
            consumer.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            consumer.opt_start_seq = floor + 1

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Fetch and handle messages until ``stop`` is set (or the task is cancelled).

        Up to ``batch`` messages are in hand at once, and a fetch asks for as many as have been settled, so one slow
        start does not hold back the messages behind it. A message that Temporal could not take pauses fetching
        (:meth:`_back_off`); the messages already in hand go on meanwhile. On ``stop``, the messages in hand are
        finished and settled before it returns.
        """
        stop = stop or asyncio.Event()
        await self.ensure_consumer()
        watcher = asyncio.create_task(self._watch_lag(stop))
        try:
            await asyncio.gather(*(self._consume(name, stop) for name in self.config.lanes()))
        finally:
            watcher.cancel()

    async def _consume(self, consumer: str, stop: asyncio.Event) -> None:
        """One lane: fetch and handle the messages of ``consumer`` until ``stop`` is set."""
        sub = await self.js.pull_subscribe_bind(durable=consumer, stream=self.config.stream)
        log.info("bridge consuming %s as %s", self.config.stream, consumer)
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
        oldest: float | None = None
        waiting = 0
        for name, subjects in self.config.lanes().items():
            info = await self.js.consumer_info(self.config.stream, name)
            pending = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            if not pending:
                continue
            waiting += pending
            after = int(info.ack_floor.stream_seq or 0) + 1 if info.ack_floor else 1
            for subject in subjects:
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
        except RunBusy as err:
            self._message_failures.record(sequence, f"RunBusy: {err}", unexpected=False)
            await msg.nak(delay=self._retry_delay(meta.num_delivered))
            return Outcome.FAILED, event_type
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
        dead letters with the run's reason. A run from before the Update gets the signal (the same rules).

        With reviewers' keys configured, a review whose signature no run could accept (unsigned, unknown key, bad
        signature, expired) is dead-lettered here, without a call to Temporal. At most ``reviews_per_run`` reviews
        of one run are in flight at once; one the run is too busy to take is retried later, alone."""
        decision = data.decision()
        if self.reviewer_keys is not None:
            problem = signing.signed_review_problem(
                decision,
                run_id=data.pipeline_id,
                keys=self.reviewer_keys,
                now=datetime.now(UTC),
                max_validity_seconds=self.max_review_validity_seconds,
            )
            if problem:
                raise DeadLetter(f"{REVIEW_REFUSED}: {problem}")
        async with self._slot(data.pipeline_id):
            handle = self._handle_for(data.pipeline_id)
            try:
                await handle.execute_update("review", decision, rpc_timeout=self._rpc_timeout)
                return Outcome.SIGNALLED
            except WorkflowUpdateFailedError as err:
                cause = err.cause
                if isinstance(cause, ApplicationError) and cause.type == REVIEW_REFUSED:
                    raise DeadLetter(f"{REVIEW_REFUSED}: {cause.message}") from None
            except RPCError as err:
                if err.status == RPCStatusCode.RESOURCE_EXHAUSTED:
                    raise RunBusy(f"{data.pipeline_id[:200]}: {err.message}") from None
                raise
            await handle.signal("review", decision, rpc_timeout=self._rpc_timeout)
            return Outcome.SIGNALLED

    @contextlib.asynccontextmanager
    async def _slot(self, pipeline_id: str) -> AsyncIterator[None]:
        """One of the ``reviews_per_run`` places of a run's reviews in flight (forgotten when none is used)."""
        semaphore, users = self._review_slots.get(pipeline_id) or (asyncio.Semaphore(self.config.reviews_per_run), 0)
        self._review_slots[pipeline_id] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._review_slots[pipeline_id]
            if users <= 1:
                del self._review_slots[pipeline_id]
            else:
                self._review_slots[pipeline_id] = (semaphore, users - 1)

    def _handle_for(self, pipeline_id: str) -> WorkflowHandle[Any, Any]:
        return self.temporal.get_workflow_handle(pipeline_id)

    async def _dead_letter(self, msg: Msg, reason: str, *, final: bool = False) -> Outcome:
        """Publish the dead letter of ``msg`` and terminate it (see :func:`events.dead_letters.dead_letter`)."""
        sent = await dead_letter(
            self.js, msg, reason, final=final, max_payload=self.nc.max_payload, retry_delays=self.config.retry_delays
        )
        if not sent:
            return Outcome.FAILED
        DEAD_LETTERS.labels(reason_kind(reason)).inc()
        self._message_failures.forget(msg.metadata.sequence.stream)
        return Outcome.DEAD_LETTERED


def _sequence(msg: Msg) -> str:
    try:
        return str(msg.metadata.sequence.stream)
    except Exception:  # not a JetStream message
        return "?"
