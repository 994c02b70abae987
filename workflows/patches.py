"""Every patch of the workflows' code (``workflow.patched``), each with the runs it keeps replaying.

A run started on today's code asks for every patch in :data:`PATCHES` at its start, before its first local activity:
a patch first asked for just after a local activity's result could, on replay, be asked in an earlier workflow task
than the one that recorded it, and be refused. A new patch is added at the end of :data:`PATCHES`; none is removed.
"""

from __future__ import annotations

OUTBOUND_EVENTS_PATCH = "outbound-events"
"""Runs recorded before outbound events existed replay without them."""

LOCAL_EVENTS_PATCH = "outbound-events-local"
"""Outbound events are published by a local activity: it runs in the worker that runs the workflow task, and its
result is recorded as a marker with the next command, so an announcement costs no task round trip through the
server (a regular activity per event doubled what a run scheduled). Runs recorded before publish through a
regular activity, and keep doing so to their end."""

WAIT_FOR_CANCELLATION_PATCH = "wait-for-cancellation"
"""Runs recorded before it let compensations start while a cancelled activity was still running."""

REVIEW_RULES_PATCH = "review-rules-normalised"
"""Runs recorded before it compared reviewer names as given and took reviews of any size."""

REMINDERS_PATCH = "review-reminders"
"""Runs recorded before gates sent a reminder at half their timeout and an escalation at 80 %."""

BOUND_REVIEWS_PATCH = "reviews-bound-and-signed"
"""Runs recorded before gates carried digests, loaded reviewers' keys and refused agent identities; taken once,
when the run starts, so the ``review`` Update's validator (which may not call ``workflow.patched``) knows the rules."""

AUDIT_STREAM_PATCH = "audit-stream"
"""Runs recorded before reviews were appended to ``QUANTUM_AUDIT`` replay without appending."""

REPAIR_PATCH = "model-repair-attempts"
"""Runs recorded before the repair loop failed at the first failing attempt."""

REMEMBER_PATCH = "remember-generations"
"""Runs recorded before successful model generations were kept in the pattern store."""

PROJECT_CHAIN_PATCH = "infra-project-chain"
"""Runs recorded before requests could name other projects' resources."""

RECORD_RELEASE_PATCH = "security-record-release"
"""Runs recorded before it kept no release's findings for the next run to be compared with."""

PATCHES: tuple[str, ...] = (
    OUTBOUND_EVENTS_PATCH,
    LOCAL_EVENTS_PATCH,
    WAIT_FOR_CANCELLATION_PATCH,
    REVIEW_RULES_PATCH,
    REMINDERS_PATCH,
    BOUND_REVIEWS_PATCH,
    AUDIT_STREAM_PATCH,
    REPAIR_PATCH,
    REMEMBER_PATCH,
    PROJECT_CHAIN_PATCH,
    RECORD_RELEASE_PATCH,
)
