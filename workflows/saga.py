"""The saga facade every workflow uses: a run's view and stages, its compensations and its review gates.

The parts live in their own modules (``runview``: view, stages, outbound events; ``compensations``: the stack;
``reviews``: the gates and the rules a review must pass); :class:`Run` puts them together for the workflows.

Deterministic code only: no I/O, clocks or randomness. Everything here runs inside workflow code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from events.catalog import PipelineCompleted, PipelineFailed, PipelineStarted
    from events.models import ApprovalPolicy, ReviewDecision
    from workflows import metrics
    from workflows.compensations import Compensations
    from workflows.models import MAX_ERROR_CHARS, ReviewVerdict, RunStatus, RunStatusView, clip
    from workflows.patches import ask_later_patches
    from workflows.reviews import Gates
    from workflows.runview import RunStopped, RunView, failure_message

__all__ = [
    "Run",
    "RunStopped",
    "failure_message",
]

T = TypeVar("T")


class Run(RunView):
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
        super().__init__(view)
        self.policy = policy
        self.requester = requester
        self.project = project
        self.environment = environment
        self.compensations = Compensations(self)
        self.gates = Gates(self, policy=policy, requester=requester)
        self._began = workflow.now()

    # --- compensations -----------------------------------------------------------------------------------------

    def on_failure(self, step: str, undo: Callable[[], Awaitable[Any]]) -> None:
        """Push a compensation; it runs only if the run stops before it succeeds."""
        self.compensations.push(step, undo)

    async def compensate(self) -> None:
        await self.compensations.compensate()

    # --- gates -------------------------------------------------------------------------------------------------

    def review(self, decision: ReviewDecision) -> None:
        """Apply a ``review`` signal: count it, or refuse it with the reason in the audit trail (see
        :func:`workflows.reviews.refusal` for the rules)."""
        self.gates.review(decision)

    def validate_review(self, decision: ReviewDecision) -> None:
        """The ``review`` Update's validator: raises with the reason to refuse, before anything is recorded."""
        self.gates.validate(decision)

    def review_update(self, decision: ReviewDecision) -> ReviewVerdict:
        """The ``review`` Update's handler: applies the review and returns the verdict."""
        return self.gates.update(decision)

    async def gate(self, gate: str, stage: str, *, reason: str, digest: str | None = None) -> None:
        """Open ``gate`` before ``stage`` and wait for its decision; stop the run unless it is approved."""
        await self.gates.gate(gate, stage, reason=reason, digest=digest)

    # --- ending ------------------------------------------------------------------------------------------------

    async def execute(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run the workflow body; on a stop or a cancellation compensate, then close with the right status."""
        view = self.view
        ask_later_patches()
        self.gates.begin()
        metrics.run_started()
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
        await self.gates.drain()
        view.status = "succeeded"
        view.stage = None
        self._finished("succeeded")
        await self.announce(
            "quantum.pipeline.completed",
            "completed",
            PipelineCompleted(pipeline_id=view.pipeline_id, status="succeeded", outputs=dict(view.outputs)),
        )
        await self.announced()
        return result

    def _finished(self, status: str) -> None:
        metrics.run_finished(status, (workflow.now() - self._began).total_seconds())
        if any(c.outcome == "failed" for c in self.view.compensations):
            metrics.partially_compensated()

    async def _close(self, status: RunStatus, error: str) -> None:
        """Compensate, set the final status, and announce how the run ended."""
        error = clip(error, MAX_ERROR_CHARS)
        self.view.error = error
        await self.compensate()
        await self.gates.drain()
        self.view.status = status
        self.view.stage = None
        self._finished(status)
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
        await self.announced()


_FAILURE_TYPES: dict[str, str] = {
    "failed": "PipelineFailed",
    "rejected": "GateRejected",
    "timed_out": "GateTimedOut",
}
