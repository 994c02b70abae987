"""A run's outbound events on their way to the bus: carried by the next activity the run schedules, or published by
one local activity when the run waits for something else (a review, a child workflow) or ends.

An event announced as a run goes from one stage to the next rides, as a header (:data:`EVENTS_HEADER`, encoded like
every payload), on the activity the run schedules next; the worker publishes it before it runs that activity
(``quantum.outbox``). A run thus schedules what it did without events, and a dev run records one local activity
instead of one per event. Exactly once is unchanged: the event id (``Nats-Msg-Id``) comes from the run and the step,
so a publication repeated within JetStream's duplicate window is dropped.

- A carrier that never ran (cancelled before a worker took it) gives its events back; so does any carrier that ended
  without success within :data:`REPUBLISH_WITHIN` of being scheduled, since a repeat is then still dropped as a
  duplicate. The next carrier, or the next flush, takes them.
- Events that no activity scheduled in the same workflow task takes are published by one local activity
  (:meth:`Outbox.flush`), so an event never waits for a later stage: a gate's request goes out as the gate opens.

Deterministic code only: the outbox lives in the workflow; ``quantum.outbox.OutboxInterceptor`` attaches it to each
run and hands its events to the activities the run schedules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, FailureError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from events.publisher import EventPublisher, PublishEventInput
    from workflows import presets

EVENTS_HEADER = "quantum-events"
"""The header of a carrier activity: the run's events (a list of ``PublishEventInput``) to publish before it runs."""

REPUBLISH_WITHIN = timedelta(seconds=90)
"""A carrier that ended without success this soon after it was scheduled gives its events back: a repeat is then
well inside JetStream's duplicate window (120 s by default; the settings refuse less than this)."""

_ATTRIBUTE = "_quantum_outbox"


class OutboxMissing(RuntimeError):
    """The worker running this workflow lacks the outbox interceptor (``quantum.worker.new_worker`` adds it)."""


def find() -> Outbox | None:
    """The running workflow's outbox, if the worker's interceptor attached one."""
    return getattr(workflow.instance(), _ATTRIBUTE, None)


def current() -> Outbox:
    """The running workflow's outbox, attached by the worker's interceptor."""
    box = find()
    if box is None:
        raise OutboxMissing(
            "this worker has no outbox interceptor: build workers with quantum.worker.new_worker and replayers with "
            "quantum.worker.new_replayer"
        )
    return box


def attach(instance: Any) -> Outbox:
    """Give workflow ``instance`` an outbox (the interceptor does, as each run starts)."""
    box = Outbox()
    setattr(instance, _ATTRIBUTE, box)
    return box


class Outbox:
    """The run's events not yet handed to a carrier. ``warn`` records that a flush could not publish its events."""

    def __init__(self) -> None:
        self.pending: list[PublishEventInput] = []
        self.warn: Callable[[str], None] = workflow.logger.warning
        self._sweep: asyncio.Task[None] | None = None
        self._flushing: asyncio.Task[None] | None = None

    def add(self, event: PublishEventInput) -> None:
        """Queue ``event``; when no activity scheduled before the run next waits takes it, a local activity does."""
        self.pending.append(event)
        self._sweep_soon()

    def take(self) -> list[PublishEventInput]:
        events, self.pending = self.pending, []
        return events

    def carried(self, handle: asyncio.Future[Any], events: list[PublishEventInput], cancellation: Any) -> None:
        """Watch carrier ``handle``: if it ends without success and may not have published ``events``, or a repeat
        is still a duplicate, they go back to the front of the queue."""
        scheduled = workflow.now()

        def ended(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                return
            if _may_repeat(done, cancellation, scheduled):
                self.pending[:0] = events
                self._sweep_soon()

        handle.add_done_callback(ended)

    def _sweep_soon(self) -> None:
        """Publish what no carrier takes before the run next waits (once per wait, however many events queue)."""
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().create_task(self._sweep_unclaimed())

    async def _sweep_unclaimed(self) -> None:
        # resume once every task that can run has run and the run is about to wait: an activity scheduled meanwhile
        # took the events; a wait for anything else (a review, a timer, a child) leaves them here to publish
        await workflow.wait_condition(lambda: True)
        self._sweep = None
        if self.pending:
            await self.flush()

    async def flush(self) -> None:
        """Publish every queued event with one local activity, in order after any flush already under way."""
        while self._flushing is not None:
            await self._flushing
        events = self.take()
        if not events:
            return
        flushing = self._flushing = asyncio.get_running_loop().create_task(self._publish(events))
        try:
            await flushing
        finally:
            if self._flushing is flushing:
                self._flushing = None

    async def _publish(self, events: list[PublishEventInput]) -> None:
        try:
            await workflow.execute_local_activity_method(EventPublisher.publish_all, events, **presets.PUBLISH_LOCAL)
        except FailureError as err:
            if is_cancelled_exception(err):
                raise asyncio.CancelledError(str(err)) from err
            kinds = ", ".join(f"{e.type} ({e.step})" for e in events)
            self.warn(f"events {kinds} were not published: {err.message}")


def _may_repeat(done: asyncio.Future[Any], cancellation: Any, scheduled: datetime) -> bool:
    if workflow.now() - scheduled < REPUBLISH_WITHIN:
        return True
    error = None if done.cancelled() else done.exception()
    never_ran = isinstance(error, ActivityError) and not error.started_event_id
    return never_ran and cancellation != ActivityCancellationType.TRY_CANCEL
