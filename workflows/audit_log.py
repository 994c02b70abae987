"""The run's side of the review audit trail: append each review to ``QUANTUM_AUDIT`` through ``audit.append``,
in the order the run took them, keeping the chain's head (index and last hash) in the run's state.

Deterministic code only: the review's time is workflow time, the I/O is the activity's.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError, is_cancelled_exception

from workflows.patches import AUDIT_STREAM_PATCH, taken

with workflow.unsafe.imports_passed_through():
    from events.audit import (
        AppendedRecord,
        AuditChain,
        AuditRecorder,
        RefusalSummaryInput,
        RefusalTally,
        ReviewFields,
        SpentNoncesInput,
    )
    from events.models import ReviewDecision
    from workflows.models import AuditEntry


APPEND: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "schedule_to_close_timeout": timedelta(minutes=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=15),
        non_retryable_error_types=["InvalidAuditRecord"],
    ),
}
"""Appending a record: retried for up to ten minutes (NATS away), then the run carries on with a warning."""

LOOKUP: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=10),
    "schedule_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=5)),
}
"""Reading the nonces earlier executions spent: a gate does not wait long for it (the challenge already binds every
signed review to this execution; the nonces are a second lock)."""


class AuditLog:
    """A run's hash chain on the bus. ``append`` is awaited once per review, in any handler; appends are made one
    at a time in the order they were asked for, each linking to the one before.

    ``chain`` is the state to keep: its ``index`` and ``head`` (the last record's hash) are what the next record
    links to. A failed append leaves the head where it was (the next record takes its place in the chain) and
    returns the warning to record.
    """

    def __init__(self, run_id: str) -> None:
        self.chain = AuditChain.start(run_id)
        self._lock = asyncio.Lock()
        self._pending = 0

    def bind_execution(self, execution: str) -> None:
        """Keep the chain of this execution (runs with gate challenges), starting from its own genesis."""
        self.chain = AuditChain.start(self.chain.run_id, execution)

    @staticmethod
    def review_fields(entry: AuditEntry, when: Any, signed: ReviewDecision | None = None) -> ReviewFields:
        """What a record says of ``entry`` (and of what the reviewer signed, when ``signed``)."""
        identity = str(getattr(entry, "identity", "") or "")
        return ReviewFields(
            gate=entry.gate,
            reviewer=entry.reviewer,
            approved=entry.approved,
            comment=entry.comment,
            accepted=entry.accepted,
            reason=entry.reason,
            digest=str(getattr(entry, "digest", "") or "") or None,
            authenticated=entry.accepted and identity.startswith("ed25519:"),
            identity=identity,
            nonce=str(getattr(entry, "nonce", "") or ""),
            reviewed_at=when,
            challenge=(signed.challenge or "") if signed else "",
            expires_at=(signed.expires_at or "") if signed else "",
            signature=(signed.signature or "") if signed else "",
        )

    async def summarize(self, tally: RefusalTally) -> str | None:
        """Put one gate opening's tally of refused reviews beside the chain; a warning, or None."""
        inp = RefusalSummaryInput(
            run_id=self.chain.run_id, execution=self.chain.execution, tally=tally, summarized_at=workflow.now()
        )
        try:
            await workflow.execute_activity_method(AuditRecorder.refusals, inp, **APPEND)
        except FailureError as err:
            if is_cancelled_exception(err):
                raise asyncio.CancelledError(str(err)) from err
            cause = err.cause if isinstance(err.cause, FailureError) else err
            return f"the summary of refused reviews of gate {tally.gate!r} was not recorded: {cause.message}"
        return None

    async def spent_nonces(self) -> list[str]:
        """The nonces counted by earlier executions under this workflow id (none when the stream cannot say)."""
        inp = SpentNoncesInput(run_id=self.chain.run_id, execution=self.chain.execution)
        try:
            spent: list[str] = await workflow.execute_activity_method(AuditRecorder.spent_nonces, inp, **LOOKUP)
        except FailureError as err:
            if is_cancelled_exception(err):
                raise asyncio.CancelledError(str(err)) from err
            return []
        return spent

    async def append(self, entry: AuditEntry, *, signed: ReviewDecision | None = None) -> str | None:
        """Append ``entry`` (as the run recorded it in its ``audit``) to the chain; a warning, or None.

        ``signed``: the review as received, whose signed fields the record carries (runs with gate challenges). The
        record's time is now, in workflow time.
        """
        if not taken(AUDIT_STREAM_PATCH):
            return None
        review = self.review_fields(entry, workflow.now(), signed)
        self._pending += 1
        try:
            async with self._lock:
                inp = self.chain.next_input(review)
                try:
                    appended: AppendedRecord = await workflow.execute_activity_method(
                        AuditRecorder.append, inp, **APPEND
                    )
                except FailureError as err:
                    if is_cancelled_exception(err):
                        raise asyncio.CancelledError(str(err)) from err
                    cause = err.cause if isinstance(err.cause, FailureError) else err
                    what = f"review {inp.index} of gate {entry.gate!r}"
                    return f"{what} was not appended to the audit stream: {cause.message}"
                self.chain.advance(appended)
                return None
        finally:
            self._pending -= 1

    async def drain(self) -> None:
        """Wait until every append asked for has ended (call before the run closes)."""
        await workflow.wait_condition(lambda: self._pending == 0)
