"""The compensation stack of a run: what to undo, newest first, if the run stops.

Deterministic code only: everything here runs inside workflow code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from events.catalog import CompensationCompleted
    from workflows import metrics
    from workflows.models import CompensationRecord
    from workflows.runview import RunView, failure_message


class Compensations:
    """Pushed compensations; :meth:`compensate` runs them newest first, each awaited, recording each outcome."""

    def __init__(self, run: RunView) -> None:
        self._run = run
        self._stack: list[tuple[str, Callable[[], Awaitable[Any]]]] = []

    def push(self, step: str, undo: Callable[[], Awaitable[Any]]) -> None:
        self._stack.append((step, undo))

    async def compensate(self) -> None:
        """Run every pushed compensation newest first, each awaited; a failing one is recorded and the rest run."""
        view = self._run.view
        while self._stack:
            step, undo = self._stack.pop()
            view.stage = step
            try:
                await undo()
            except FailureError as err:
                workflow.logger.warning("compensation %s failed: %s", step, failure_message(err))
                record = CompensationRecord(step=step, outcome="failed", error=failure_message(err))
            else:
                record = CompensationRecord(step=step, outcome="completed")
            view.compensations.append(record)
            metrics.compensation(step, record.outcome)
            await self._run.announce(
                "quantum.compensation.completed",
                f"compensation.{step}",
                CompensationCompleted(pipeline_id=view.pipeline_id, **record.model_dump()),
            )
