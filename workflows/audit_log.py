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
    from events.audit import AppendedRecord, AuditChain, AuditRecorder, ReviewFields
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

    async def append(
        self,
        entry: AuditEntry,
        *,
        digest: str | None = None,
        authenticated: bool | None = None,
    ) -> str | None:
        """Append ``entry`` (as the run recorded it in its ``audit``) to the chain; a warning, or None.

        ``digest``: the digest the reviewer decided on (default: the entry's ``digest``, if it has one);
        ``authenticated``: whether the reviewer's identity was verified (default: the entry's ``identity`` names a
        key, ``ed25519:...``). The record's time is now, in workflow time.
        """
        if not taken(AUDIT_STREAM_PATCH):
            return None
        identity = str(getattr(entry, "identity", "") or "")
        if authenticated is None:
            authenticated = entry.accepted and identity.startswith("ed25519:")
        review = ReviewFields(
            gate=entry.gate,
            reviewer=entry.reviewer,
            approved=entry.approved,
            comment=entry.comment,
            accepted=entry.accepted,
            reason=entry.reason,
            digest=digest if digest is not None else (str(getattr(entry, "digest", "") or "") or None),
            authenticated=authenticated,
            identity=identity,
            nonce=str(getattr(entry, "nonce", "") or ""),
            reviewed_at=workflow.now(),
        )
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
