"""Every patch of the workflows' code, each with the runs it keeps replaying, and :func:`taken`, which the
workflows ask instead of ``workflow.patched``.

Each patch a run asks for records a marker and a search attribute update in its history, which the server writes.
A run that took :data:`LOCAL_EVENTS_PATCH` was started by code that has every patch before it, so it follows them
all without asking for each. A patch added after it goes in :data:`LATER` and is asked for at the start of a run,
before its first local activity: a patch first asked for just after a local activity's result could, on replay, be
asked in an earlier workflow task than the one that recorded it, and be refused. No patch is ever removed.
"""

from __future__ import annotations

from temporalio import workflow

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

IMPLIED: frozenset[str] = frozenset(
    (
        OUTBOUND_EVENTS_PATCH,
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
)
"""The patches every run that took :data:`LOCAL_EVENTS_PATCH` follows."""

CARRIED_EVENTS_PATCH = "outbound-events-carried"
"""Outbound events ride on the next activity the run schedules and are published by the worker before it runs
(``workflows.outbox``); a local activity publishes only those that no activity takes before the run waits or ends.
Runs recorded before publish each event with a local activity of its own."""

REVIEW_CHALLENGE_PATCH = "reviews-challenged"
"""Gates issue a challenge per opening, bound to the run's execution, that signed reviews must sign; the rules check
signatures last, once, with OpenSSL and within a budget; refused reviews schedule nothing (counted, summarised
beside the audit chain when the run ends); accepted ones are appended to a chain of the execution, carrying the
reviewer's signed fields; a gate stops a run whose history nears Temporal's limits. Runs recorded before judge,
record and append as they did."""

LATER: tuple[str, ...] = (CARRIED_EVENTS_PATCH, REVIEW_CHALLENGE_PATCH)
"""Patches added after :data:`LOCAL_EVENTS_PATCH`: asked for at the start of every run (:func:`ask_later_patches`)."""


def taken(patch: str) -> bool:
    """Whether this run follows ``patch`` (``workflow.patched``, without asking for the patches a run that took
    :data:`LOCAL_EVENTS_PATCH` follows anyway)."""
    if patch in IMPLIED and workflow.patched(LOCAL_EVENTS_PATCH):
        return True
    return workflow.patched(patch)


def ask_later_patches() -> None:
    """Ask for :data:`LOCAL_EVENTS_PATCH` and every patch in :data:`LATER`, before the run's first local activity."""
    if workflow.patched(LOCAL_EVENTS_PATCH):
        for patch in LATER:
            workflow.patched(patch)
