"""The worker's half of the outbox (``workflows.outbox``): each run gets an outbox as it starts, the activities a run
schedules carry its pending events in a header, and the worker publishes them before it runs the activity.

Publishing goes through whatever the worker registers as ``events.publish``: the real publisher in a worker, a no-op
in the saga benchmark. A bus that does not answer holds the activity (which goes on heartbeating) for up to
:data:`PATIENCE`, as the run waited for the publishing activity before; after that the events are logged and counted
as unpublished and the activity runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_before_delay, wait_exponential

from events.publisher import PublishEventInput
from workflows import outbox

log = logging.getLogger(__name__)

PATIENCE = 60.0
"""Seconds a carrier waits for the bus before it runs without having published its events."""
FIRST_RETRY_SECONDS = 0.5
LAST_RETRY_SECONDS = 8.0
"""The delays between tries double from the first to the last."""

UNPUBLISHED = Counter(
    "quantum_events_unpublished_total",
    "Outbound events a carrier activity could not publish (the bus did not answer, or the event was refused)",
    ["type"],
)

Publish = Callable[[PublishEventInput], Awaitable[Any]]


class OutboxInterceptor(Interceptor):
    """Attaches an outbox to each run; publishes the events an activity carries (through ``publish``) before it runs.

    ``publish`` None: the worker registers no ``events.publish``; carried events are logged and counted as
    unpublished.
    """

    def __init__(self, publish: Publish | None) -> None:
        self.publish = publish

    def workflow_interceptor_class(
        self,
        input: WorkflowInterceptorClassInput,  # noqa: A002
    ) -> type[WorkflowInboundInterceptor]:
        return _AttachOutbox

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:  # noqa: A002
        return _PublishCarried(next, self.publish)


class _AttachOutbox(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_HandToCarriers(outbound))

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:  # noqa: A002
        outbox.attach(workflow.instance())
        return await super().execute_workflow(input)


class _HandToCarriers(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:  # noqa: A002
        box = outbox.find()
        if box is None or not box.pending:
            return super().start_activity(input)
        events = box.take()
        input.headers = {**input.headers, outbox.EVENTS_HEADER: workflow.payload_converter().to_payload(events)}
        handle = super().start_activity(input)
        box.carried(handle, events, input.cancellation_type)
        return handle


class _PublishCarried(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, publish: Publish | None) -> None:  # noqa: A002
        super().__init__(next)
        self.publish = publish

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:  # noqa: A002
        carried = input.headers.get(outbox.EVENTS_HEADER)
        if carried is not None:
            events = activity.payload_converter().from_payload(carried, list[PublishEventInput])
            await self._publish(events)
        return await super().execute_activity(input)

    async def _publish(self, events: list[PublishEventInput]) -> None:
        info = activity.info()
        if info.attempt > 1 and datetime.now(UTC) - info.scheduled_time >= outbox.REPUBLISH_WITHIN:
            # the first attempt published them first thing; a repeat now could outlive the duplicate window
            log.debug(
                "%s attempt %d: its %d events were published by an earlier attempt",
                info.activity_type,
                info.attempt,
                len(events),
            )
            return
        for event in events:
            await self._publish_one(event)

    async def _publish_one(self, event: PublishEventInput) -> None:
        if self.publish is None:
            self._unpublished(event, "this worker registers no events.publish")
            return

        def again(state: RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome is not None else None
            log.warning("publishing %s (%s) failed (%s); trying again", event.type, event.step, _describe(err))

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda err: not (isinstance(err, ApplicationError) and err.non_retryable)),
            wait=wait_exponential(multiplier=FIRST_RETRY_SECONDS, max=LAST_RETRY_SECONDS),
            stop=stop_before_delay(PATIENCE),
            before_sleep=again,
            reraise=True,
        )
        try:
            await retrying(self.publish, event)
        except Exception as err:  # refused, or the bus away for longer than PATIENCE
            self._unpublished(event, _describe(err))

    @staticmethod
    def _unpublished(event: PublishEventInput, problem: str) -> None:
        UNPUBLISHED.labels(event.type).inc()
        log.error("event %s (%s) of %s was not published: %s", event.type, event.step, event.workflow_id, problem)


def _describe(err: BaseException | None) -> str:
    if isinstance(err, ApplicationError):
        return f"{err.type}: {err.message}"
    return f"{type(err).__name__}: {err}"
