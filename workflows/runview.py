"""A run's view (what the ``status`` query shows), its stage bookkeeping and its outbound events.

Deterministic code only: no I/O, clocks or randomness. Everything here runs inside workflow code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
    is_cancelled_exception,
)

from workflows import outbox
from workflows.patches import CARRIED_EVENTS_PATCH, LOCAL_EVENTS_PATCH, OUTBOUND_EVENTS_PATCH, taken

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from events.catalog import StageCompleted, StageFailed
    from events.publisher import EventPublisher, PublishEventInput
    from workflows import metrics, presets
    from workflows.models import (
        MAX_ERROR_CHARS,
        MAX_WARNING_CHARS,
        MAX_WARNINGS,
        RunStatus,
        RunStatusView,
        clip,
    )

T = TypeVar("T")


class RunStopped(Exception):
    """Raised inside a workflow to end the run: compensate, then close with ``status``.

    ``repairable``: the generated code failed a check (its tests, the request's acceptance checks, the policy's
    coverage or mutation score) that a model may fix in another attempt.
    """

    def __init__(self, status: RunStatus, message: str, *, repairable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.repairable = repairable


def _step(prefix: str, attempt: int, suffix: str) -> str:
    return f"{prefix}.{suffix}" if attempt == 1 else f"{prefix}.attempt-{attempt}.{suffix}"


def failure_message(err: BaseException) -> str:
    """The innermost human-readable message of a Temporal failure chain, bounded."""
    while isinstance(err, (ActivityError, ChildWorkflowError)) and err.cause is not None:
        err = err.cause
    if isinstance(err, ApplicationError) and err.type:
        message = f"{err.type}: {err.message}"
    elif isinstance(err, FailureError):
        message = err.message
    else:
        message = str(err) or type(err).__name__
    return clip(message, MAX_ERROR_CHARS)


class RunView:
    """The view of one run, its stages and the events it announces."""

    def __init__(self, view: RunStatusView) -> None:
        self.view = view
        self._stage_started: dict[str, datetime] = {}
        self._outbox: outbox.Outbox | None = None

    # --- outbound events ---------------------------------------------------------------------------------------

    async def announce(self, event_type: str, step: str, data: BaseModel) -> None:
        """Publish an outbound event: through the run's outbox (carried by the next activity, or published by a
        local activity when none comes before the run waits); a failure to publish is a warning.

        Exactly once on the bus: the event id comes from the run and the step, so a publication repeated (a
        retried attempt, or a local activity run again after its worker died before the marker was recorded) is
        dropped by JetStream as a duplicate.
        """
        if not taken(OUTBOUND_EVENTS_PATCH):
            return
        inp = PublishEventInput(
            type=event_type, data=data.model_dump(mode="json"), workflow_id=self.view.pipeline_id, step=step
        )
        if taken(CARRIED_EVENTS_PATCH):
            self.outbox.add(inp)
            return
        try:
            if taken(LOCAL_EVENTS_PATCH):
                await workflow.execute_local_activity_method(EventPublisher.publish, inp, **presets.PUBLISH_LOCAL)
            else:
                await workflow.execute_activity_method(EventPublisher.publish, inp, **presets.PUBLISH)
        except FailureError as err:
            if is_cancelled_exception(err):
                raise asyncio.CancelledError(str(err)) from err
            self.warn(f"event {event_type} ({step}) was not published: {failure_message(err)}")

    @property
    def outbox(self) -> outbox.Outbox:
        """The run's outbox (the worker's interceptor attaches it as the run starts)."""
        if self._outbox is None:
            self._outbox = outbox.current()
            self._outbox.warn = self.warn
        return self._outbox

    async def announced(self) -> None:
        """Publish the events still in the outbox: the run is about to end."""
        if taken(CARRIED_EVENTS_PATCH):
            await self.outbox.flush()

    def warn(self, warning: str) -> None:
        """Record a warning in the view: each bounded, and at most ``MAX_WARNINGS`` of them (the last says so)."""
        warnings = self.view.warnings
        if len(warnings) < MAX_WARNINGS - 1:
            warnings.append(clip(warning, MAX_WARNING_CHARS))
        elif len(warnings) == MAX_WARNINGS - 1:
            warnings.append("more warnings were left out")

    # --- stages ------------------------------------------------------------------------------------------------

    async def stage(self, name: str, step: Callable[[], Awaitable[T]], *, attempt: int = 1) -> T:
        """Run one stage, keeping its state in the view; an activity failure stops the run as ``failed``.

        ``attempt`` above 1 is a stage run again by the repair loop: its events get steps of their own, so each
        attempt is announced once.
        """
        self.started(name)
        try:
            result = await step()
        except asyncio.CancelledError:
            self.view.stages[name] = "cancelled"
            self._timed(name, "cancelled")
            raise
        except RunStopped as stopped:
            await self.failed(name, stopped.message, attempt=attempt)
            raise
        except FailureError as err:
            if is_cancelled_exception(err):
                self.view.stages[name] = "cancelled"
                self._timed(name, "cancelled")
                raise asyncio.CancelledError(str(err)) from err
            failed = RunStopped("failed", f"{name} failed: {failure_message(err)}")
            await self.failed(name, failed.message, attempt=attempt)
            raise failed from err
        await self.succeeded(name, attempt=attempt)
        return result

    def started(self, name: str) -> None:
        self.view.stage = name
        self.view.stages[name] = "running"
        self._stage_started[name] = workflow.now()

    def _timed(self, name: str, outcome: str) -> None:
        """Record how long stage ``name`` took since it started (once per start)."""
        began = self._stage_started.pop(name, None)
        if began is not None:
            metrics.stage_ended(name, outcome, (workflow.now() - began).total_seconds())

    async def succeeded(self, name: str, *, attempt: int = 1) -> None:
        self.view.stages[name] = "succeeded"
        self._timed(name, "succeeded")
        await self.announce(
            "quantum.stage.completed",
            _step(f"stage.{name}", attempt, "completed"),
            StageCompleted(pipeline_id=self.view.pipeline_id, stage=name),
        )

    async def failed(self, name: str, error: str, *, attempt: int = 1) -> None:
        self.view.stages[name] = "failed"
        self._timed(name, "failed")
        await self.announce(
            "quantum.stage.failed",
            _step(f"stage.{name}", attempt, "failed"),
            StageFailed(pipeline_id=self.view.pipeline_id, stage=name, error=error),
        )

    def skip(self, name: str) -> None:
        self.view.stages[name] = "skipped"

    def fail_stage(self, name: str, message: str, *, repairable: bool = False) -> RunStopped:
        """Mark ``name`` failed by a policy check and return the exception that stops the run."""
        self.view.stages[name] = "failed"
        self._timed(name, "failed")
        return RunStopped("failed", clip(f"{name} failed: {message}", MAX_ERROR_CHARS), repairable=repairable)
