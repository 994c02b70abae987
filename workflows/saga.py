"""The saga machinery shared by every workflow: stage bookkeeping, the compensation stack and review gates.

Deterministic code only: no I/O, clocks or randomness. Everything here runs inside workflow code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from events.catalog import (
        CompensationCompleted,
        PipelineCompleted,
        PipelineFailed,
        PipelineStarted,
        ReviewRequested,
        StageCompleted,
        StageFailed,
    )
    from events.models import GATES, ApprovalPolicy, ReviewDecision, normalise_identity
    from events.publisher import EventPublisher, PublishEventInput
    from workflows import presets
    from workflows.models import (
        MAX_ERROR_CHARS,
        MAX_REFUSED_COMMENT_CHARS,
        MAX_REFUSED_REVIEWS,
        MAX_WARNING_CHARS,
        MAX_WARNINGS,
        AuditEntry,
        CompensationRecord,
        GateState,
        RunStatus,
        RunStatusView,
        clip,
    )

T = TypeVar("T")

OUTBOUND_EVENTS_PATCH = "outbound-events"
"""Runs recorded before outbound events existed replay without them."""
REVIEW_RULES_PATCH = "review-rules-normalised"
"""Runs recorded before it compared reviewer names as given and took reviews of any size."""


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


class Run:
    """One workflow run's state: what the ``status`` query shows, its compensations and its gates."""

    def __init__(
        self,
        view: RunStatusView,
        *,
        policy: ApprovalPolicy,
        requester: str,
        project: str,
        environment: str | None = None,
    ) -> None:
        self.view = view
        self.policy = policy
        self.requester = requester
        self.project = project
        self.environment = environment
        self._compensations: list[tuple[str, Callable[[], Awaitable[Any]]]] = []

    # --- outbound events ---------------------------------------------------------------------------------------

    async def announce(self, event_type: str, step: str, data: BaseModel) -> None:
        """Publish an outbound event through the publisher activity; a failure to publish is a warning."""
        if not workflow.patched(OUTBOUND_EVENTS_PATCH):
            return
        inp = PublishEventInput(
            type=event_type, data=data.model_dump(mode="json"), workflow_id=self.view.pipeline_id, step=step
        )
        try:
            await workflow.execute_activity_method(EventPublisher.publish, inp, **presets.PUBLISH)
        except FailureError as err:
            if is_cancelled_exception(err):
                raise asyncio.CancelledError(str(err)) from err
            self.warn(f"event {event_type} ({step}) was not published: {failure_message(err)}")

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
            raise
        except RunStopped as stopped:
            await self.failed(name, stopped.message, attempt=attempt)
            raise
        except FailureError as err:
            if is_cancelled_exception(err):
                self.view.stages[name] = "cancelled"
                raise asyncio.CancelledError(str(err)) from err
            failed = RunStopped("failed", f"{name} failed: {failure_message(err)}")
            await self.failed(name, failed.message, attempt=attempt)
            raise failed from err
        await self.succeeded(name, attempt=attempt)
        return result

    def started(self, name: str) -> None:
        self.view.stage = name
        self.view.stages[name] = "running"

    async def succeeded(self, name: str, *, attempt: int = 1) -> None:
        self.view.stages[name] = "succeeded"
        await self.announce(
            "quantum.stage.completed",
            _step(f"stage.{name}", attempt, "completed"),
            StageCompleted(pipeline_id=self.view.pipeline_id, stage=name),
        )

    async def failed(self, name: str, error: str, *, attempt: int = 1) -> None:
        self.view.stages[name] = "failed"
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
        return RunStopped("failed", clip(f"{name} failed: {message}", MAX_ERROR_CHARS), repairable=repairable)

    # --- compensations -----------------------------------------------------------------------------------------

    def on_failure(self, step: str, undo: Callable[[], Awaitable[Any]]) -> None:
        """Push a compensation; it runs only if the run stops before it succeeds."""
        self._compensations.append((step, undo))

    async def compensate(self) -> None:
        """Run every pushed compensation newest first, each awaited; a failing one is recorded and the rest run."""
        while self._compensations:
            step, undo = self._compensations.pop()
            self.view.stage = step
            try:
                await undo()
            except FailureError as err:
                workflow.logger.warning("compensation %s failed: %s", step, failure_message(err))
                record = CompensationRecord(step=step, outcome="failed", error=failure_message(err))
            else:
                record = CompensationRecord(step=step, outcome="completed")
            self.view.compensations.append(record)
            await self.announce(
                "quantum.compensation.completed",
                f"compensation.{step}",
                CompensationCompleted(pipeline_id=self.view.pipeline_id, **record.model_dump()),
            )

    # --- gates -------------------------------------------------------------------------------------------------

    def review(self, decision: ReviewDecision) -> None:
        """Apply a ``review`` signal: count it, or refuse it with the reason in the audit trail.

        Names are compared normalised (:func:`events.models.normalise_identity`): ``Ann`` is the requester
        ``ann``, and ``erin`` and ``ERIN`` are one reviewer. A review over any bound is refused, and what the audit
        keeps of a refused review is bounded, so no review can make the run's state too large to query or close.
        """
        reason = self._refusal(decision)
        self._record(decision, reason)
        if reason is not None:
            workflow.logger.info("review refused: %s", reason)
            return
        gate = decision.gate
        if not decision.approved:
            self.view.gates[gate] = "rejected"
            return
        self.view.approvals.setdefault(gate, []).append(decision.reviewer.strip())
        if len(self.view.approvals[gate]) >= self.policy.approvals_for(gate):
            self.view.gates[gate] = "approved"

    def _record(self, decision: ReviewDecision, reason: str | None) -> None:
        """Append the review to the audit trail; refused ones are clipped and at most ``MAX_REFUSED_REVIEWS``
        are kept (the oldest refused go first, counted in ``audit_dropped``); accepted ones are always kept."""
        limit = MAX_REFUSED_COMMENT_CHARS if reason is not None else len(decision.comment)
        entry = AuditEntry(
            gate=clip(decision.gate, 40),
            reviewer=clip(decision.reviewer, 120),
            approved=decision.approved,
            comment=clip(decision.comment, limit),
            accepted=reason is None,
            reason=clip(reason or "", MAX_WARNING_CHARS),
        )
        audit = self.view.audit
        audit.append(entry)
        refused = [i for i, e in enumerate(audit) if not e.accepted]
        if len(refused) > MAX_REFUSED_REVIEWS:
            del audit[refused[0]]
            self.view.audit_dropped += 1

    def _refusal(self, decision: ReviewDecision) -> str | None:
        normalised = workflow.patched(REVIEW_RULES_PATCH)
        if normalised:
            problem = decision.problem()
            if problem:
                return problem
        gate = decision.gate
        if gate not in GATES:
            return f"unknown gate {gate!r}; gates are {', '.join(GATES)}"
        if self.view.gates.get(gate) != "pending":
            return f"gate {gate!r} is not pending"
        same: Callable[[str], str] = normalise_identity if normalised else (lambda name: name)
        who = same(decision.reviewer)
        if who == same(self.requester):
            return f"{decision.reviewer!r} requested this run and cannot review it"
        if self.policy.reviewers and who not in {same(name) for name in self.policy.reviewers}:
            return f"{decision.reviewer!r} is not a reviewer allowed by the approval policy"
        if who in {same(name) for name in self.view.approvals.get(gate, [])}:
            return f"{decision.reviewer!r} already approved gate {gate!r}"
        return None

    async def gate(self, gate: str, stage: str, *, reason: str) -> None:
        """Open ``gate`` before ``stage`` and wait for its decision; stop the run unless it is approved."""
        self.view.gates[gate] = "pending"
        self.view.approvals[gate] = []
        self.view.pending_gate = gate
        self.view.stage = stage
        self.view.stages[stage] = "awaiting_review"
        self.view.status = "awaiting_review"
        self.view.outputs[f"{gate}_gate_reason"] = reason
        timeout = self.policy.timeout_for(gate)
        await self.announce(
            "quantum.review.requested",
            f"review.{gate}.requested",
            ReviewRequested(
                pipeline_id=self.view.pipeline_id,
                gate=gate,
                reason=reason,
                reviewers=list(self.policy.reviewers),
                required_approvals=self.policy.approvals_for(gate),
                timeout_seconds=timeout,
            ),
        )
        try:
            await workflow.wait_condition(
                lambda: self.view.gates[gate] != "pending", timeout=timedelta(seconds=timeout)
            )
        except TimeoutError:
            self.view.gates[gate] = "timed_out"
        finally:
            self.view.pending_gate = None
            if self.view.status == "awaiting_review":
                self.view.status = "running"
        state: GateState = self.view.gates[gate]
        if state == "rejected":
            self.view.stages[stage] = "failed"
            raise RunStopped("rejected", f"gate {gate!r} was rejected")
        if state == "timed_out":
            self.view.stages[stage] = "failed"
            raise RunStopped("timed_out", f"gate {gate!r} had no decision within {timeout:g} s")
        self.view.stages[stage] = "running"

    # --- ending ------------------------------------------------------------------------------------------------

    async def execute(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run the workflow body; on a stop or a cancellation compensate, then close with the right status."""
        view = self.view
        try:
            await self.announce(
                "quantum.pipeline.started",
                "started",
                PipelineStarted(
                    pipeline_id=view.pipeline_id,
                    workflow=view.workflow,
                    project=self.project,
                    requested_by=self.requester,
                    environment=self.environment,
                ),
            )
            result = await body()
        except RunStopped as stop:
            await self._close(stop.status, stop.message)
            raise ApplicationError(
                stop.message, view.model_dump(mode="json"), type=_FAILURE_TYPES[stop.status], non_retryable=True
            ) from None
        except asyncio.CancelledError:
            await self._close("cancelled", "cancelled")
            raise
        view.status = "succeeded"
        view.stage = None
        await self.announce(
            "quantum.pipeline.completed",
            "completed",
            PipelineCompleted(pipeline_id=view.pipeline_id, status="succeeded", outputs=dict(view.outputs)),
        )
        return result

    async def _close(self, status: RunStatus, error: str) -> None:
        """Compensate, set the final status, and announce how the run ended."""
        error = clip(error, MAX_ERROR_CHARS)
        self.view.error = error
        await self.compensate()
        self.view.status = status
        self.view.stage = None
        await self.announce(
            "quantum.pipeline.failed",
            "failed",
            PipelineFailed(
                pipeline_id=self.view.pipeline_id,
                status=status,
                error=error,
                compensations=[c.model_dump() for c in self.view.compensations],
            ),
        )


_FAILURE_TYPES: dict[str, str] = {
    "failed": "PipelineFailed",
    "rejected": "GateRejected",
    "timed_out": "GateTimedOut",
}
