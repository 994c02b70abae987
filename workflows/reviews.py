"""Review gates: opening one, judging and recording reviews, the verdict (the rules are :mod:`workflows.review_rules`).

The ``review`` signal, the ``review`` Update's validator and its handler all ask the same rule book, so a review is
judged the same whichever way it came. Each accepted review's audit entry names the key that verified it
(``ed25519:<name>``), or ``unauthenticated`` when the deployment configures no keys.

What a flood of reviews can cost a run that took :data:`~workflows.patches.REVIEW_CHALLENGE_PATCH`, and why it stays
bounded:

- a refused review schedules nothing: it is counted (``refused_reviews``), the last :data:`MAX_REFUSED_REVIEWS` are
  kept in the view, and one summary per gate opening goes beside the run's audit chain when the run ends; so a
  refused signal adds only its own event to the history (and the workflow task that delivers it), a refused Update
  nothing at all;
- the signature is checked last, once per review (a cache in front of the check serves the Update's handler what its
  validator found), with OpenSSL (about 0.1 ms), and at most a bounded number of failed checks per gate
  opening on the signal path: past that, signed review signals are refused unchecked and the Update (which Temporal
  lets in ten at a time) is the way in (:mod:`workflows.review_guard`);
- when the history nears Temporal's limits, the gate stops the run while there is room to compensate, instead of
  the server terminating it without.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError

from workflows.patches import (
    BOUND_REVIEWS_PATCH,
    REMINDERS_PATCH,
    REVIEW_CHALLENGE_PATCH,
    REVIEW_RULES_PATCH,
    taken,
)

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from agents.reviewers import ReviewerKeys, ReviewerKeysAgent
    from events.audit import RefusalTally
    from events.catalog import ReviewEscalated, ReviewReminder, ReviewRequested
    from events.models import ApprovalPolicy, GateRule, ReviewDecision, normalise_identity
    from workflows import metrics, presets
    from workflows.audit_log import AuditLog
    from workflows.models import (
        MAX_REFUSED_COMMENT_CHARS,
        MAX_REFUSED_REVIEWS,
        MAX_WARNING_CHARS,
        AuditEntry,
        GateOpening,
        GateState,
        ReviewVerdict,
        clip,
    )
    from workflows.review_guard import ReviewGuard
    from workflows.review_rules import (
        REFUSED,
        UNAUTHENTICATED,
        UPDATE_UNSUPPORTED,
        GatePolicy,
        Judgement,
        ReviewContext,
        digest_of,
        gate_challenge,
        gate_policy,
        identity,
        is_service_identity,
        judge,
        refusal,
        refusal_kind,
        signed_message,
    )
    from workflows.runview import RunStopped, RunView, failure_message

__all__ = [
    "REFUSED",
    "UNAUTHENTICATED",
    "UPDATE_UNSUPPORTED",
    "Gates",
    "GatePolicy",
    "ReviewContext",
    "digest_of",
    "gate_policy",
    "identity",
    "is_service_identity",
    "refusal",
    "signed_message",
]

REMINDER_AT = 0.5
ESCALATION_AT = 0.8
AUDIT_MEMO = "quantum-audit"
"""The memo key where a run with gate challenges keeps its chain's head: records, head, execution."""
RECENT_REFUSALS = 10
"""Refused reviews each gate opening's summary on the audit stream carries in full (clipped)."""


class Gates:
    """A run's review gates with their policy: opening one, judging and recording reviews, the verdict."""

    def __init__(self, run: RunView, *, policy: ApprovalPolicy, requester: str) -> None:
        self.run = run
        self.view = run.view
        self.policy = policy
        self.requester = requester
        self.bound: bool | None = None
        """Whether the run follows :data:`BOUND_REVIEWS_PATCH` (None until the run starts)."""
        self.challenged = False
        """Whether the run follows :data:`REVIEW_CHALLENGE_PATCH` (:func:`workflows.review_rules.judge`)."""
        self.keys: dict[str, bytes] | None = None
        self.keys_loaded = False
        self.defaults: dict[str, GateRule] = {}
        self.groups: dict[str, list[str]] = {}
        """The deployment's gate defaults and reviewer groups, recorded with the keys when a gate opens."""
        self.max_validity_seconds = 0.0
        self.rules: dict[str, GatePolicy] = {}
        self.audit_log = AuditLog(run.view.pipeline_id)
        """The run's hash chain on ``QUANTUM_AUDIT``: every accepted review is appended to it, in order."""
        self._appends: list[asyncio.Task[None]] = []
        self._openings: Counter[str] = Counter()
        self.guard = ReviewGuard()
        self._spent_elsewhere: frozenset[str] | None = None
        self._tallies: dict[tuple[str, int], RefusalTally] = {}
        self._memo: tuple[int, str] | None = None

    def begin(self) -> None:
        """Take the patches once, in the run's main coroutine (handlers and validators read them from here)."""
        self.bound = taken(BOUND_REVIEWS_PATCH)
        self.challenged = bool(self.bound) and taken(REVIEW_CHALLENGE_PATCH)
        if self.challenged:
            self.audit_log.bind_execution(workflow.info().run_id)

    # --- judging -----------------------------------------------------------------------------------------------

    def rule(self, gate: str) -> GatePolicy:
        """The rule of ``gate``: as resolved when it opened, else from the request's policy alone."""
        return self.rules.get(gate) or gate_policy(gate, self.policy)

    def _used_nonces(self) -> frozenset[str]:
        # spent: the nonces of counted reviews and of refused ones whose signature verified (a signed review
        # refused once, say before its gate opened, cannot be sent again to count later), and, in runs with
        # challenges, those counted by earlier runs under the same workflow id
        used = frozenset(e.nonce for e in self.view.audit if e.nonce and (e.accepted or e.identity))
        return used | (self._spent_elsewhere or frozenset())

    def context(self, gate: str, *, normalised: bool, signal: bool = False) -> ReviewContext:
        bound = bool(self.bound)
        return ReviewContext(
            run_id=self.view.pipeline_id,
            requester=self.requester,
            policy=self.policy,
            gate_state=self.view.gates.get(gate),
            approvals=tuple(self.view.approvals.get(gate, [])),
            digest=self.view.gate_digests.get(gate) if bound else None,
            keys=self.keys if bound else None,
            now=workflow.now() if bound else None,
            used_nonces=self._used_nonces(),
            normalised=normalised,
            bound=bound,
            rule=self.rule(gate),
            challenge=self.view.gate_challenges.get(gate),
            max_validity_seconds=self.max_validity_seconds,
            may_verify=not signal or self.guard.may_verify(gate),
            verify=self.guard.verify if self.challenged else None,
        )

    def judge(self, decision: ReviewDecision, *, signal: bool = False) -> Judgement:
        """The judgement of ``decision`` by the rules this run follows."""
        if self.challenged:
            return judge(decision, self.context(decision.gate, normalised=True, signal=signal))
        if self.bound:
            ctx = self.context(decision.gate, normalised=True)
        else:  # exactly as recorded before: the patch asked at each review
            ctx = self.context(decision.gate, normalised=taken(REVIEW_RULES_PATCH))
        reason = refusal(decision, ctx)
        return Judgement(reason, identity(decision, ctx) if self.bound and self.keys_loaded else "")

    def review(self, decision: ReviewDecision, *, signal: bool = True) -> str | None:
        """Apply a review (the signal, and the Update's handler): count it, or refuse it with the reason. Returns
        the reason of a refusal."""
        if signal and self.challenged:
            self.guard.watch_history()
        judgement = self.judge(decision, signal=signal)
        reason, gate = judgement.reason, decision.gate
        if reason is not None and judgement.verified:
            self.guard.failed_check(gate)
        if reason is not None and self.challenged:
            self._refused(decision, reason)
            return reason
        self.record_review(decision, reason, judgement.identity)
        if reason is not None:
            workflow.logger.info("review refused: %s", reason)
            metrics.review_refused(refusal_kind(reason))
            return reason
        if not decision.approved:
            self.view.gates[gate] = "rejected"
            return None
        self.view.approvals.setdefault(gate, []).append(decision.reviewer.strip())
        if len(self.view.approvals[gate]) >= self.rule(gate).required_approvals:
            self.view.gates[gate] = "approved"
        return None

    def validate(self, decision: ReviewDecision) -> None:
        """The Update's validator: raise to refuse, so a refused review never reaches the history."""
        if not self.bound:
            raise ApplicationError(
                "this run predates reviews by Update: send the review signal", type=UPDATE_UNSUPPORTED
            )
        reason = self.judge(decision).reason
        if reason is not None:
            metrics.review_refused(refusal_kind(reason))
            raise ApplicationError(reason, type=REFUSED, non_retryable=True)

    def update(self, decision: ReviewDecision) -> ReviewVerdict:
        """The Update's handler: the review is applied (judged again: a review accepted by the validator may meet
        another that counted first) and the verdict returned."""
        reason = self.review(decision, signal=False)
        if reason is not None:
            raise ApplicationError(reason, type=REFUSED, non_retryable=True)
        gate = decision.gate
        return ReviewVerdict(
            accepted=True,
            gate=gate,
            gate_state=self.view.gates.get(gate),
            approvals=list(self.view.approvals.get(gate, [])),
            required_approvals=self.rule(gate).required_approvals,
            identity=self.view.audit[-1].identity,
        )

    def _entry(self, decision: ReviewDecision, reason: str | None, who: str) -> AuditEntry:
        limit = MAX_REFUSED_COMMENT_CHARS if reason is not None else len(decision.comment)
        return AuditEntry(
            gate=clip(decision.gate, 40),
            reviewer=clip(decision.reviewer, 120),
            approved=decision.approved,
            comment=clip(decision.comment, limit),
            accepted=reason is None,
            reason=clip(reason or "", MAX_WARNING_CHARS),
            digest=clip(decision.digest or "", 128),
            nonce=clip(decision.nonce or "", 128),
            identity=who,
        )

    def _keep(self, entry: AuditEntry) -> None:
        """Keep ``entry`` in the view's ``audit``: refused ones are at most ``MAX_REFUSED_REVIEWS`` (the oldest go
        first, unsigned ones before signed ones, whose nonces stay spent; counted in ``audit_dropped``)."""
        audit = self.view.audit
        audit.append(entry)
        refused = [i for i, e in enumerate(audit) if not e.accepted]
        if len(refused) > MAX_REFUSED_REVIEWS:
            unsigned = [i for i in refused if not audit[i].identity]
            del audit[(unsigned or refused)[0]]
            self.view.audit_dropped += 1

    def _refused(self, decision: ReviewDecision, reason: str) -> None:
        """A refusal in a run with challenges: counted and kept in the view, tallied for the gate opening's summary
        on the audit stream; nothing is scheduled."""
        kind = refusal_kind(reason)
        metrics.review_refused(kind)
        refused = self.view.refused_reviews
        refused[kind] = refused.get(kind, 0) + 1
        entry = self._entry(decision, reason, "")
        self._keep(entry)
        gate = decision.gate if decision.gate in self._openings else ""
        key = (gate, self._openings[gate] if gate else 0)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = RefusalTally(gate=key[0], opening=key[1])
        tally.count(kind, self.audit_log.review_fields(entry, workflow.now()), keep=RECENT_REFUSALS)

    def record_review(self, decision: ReviewDecision, reason: str | None, who: str = "") -> None:
        """Record the review in the view's ``audit`` and append it to the audit stream (refused ones too, in runs
        from before gate challenges)."""
        entry = self._entry(decision, reason, who)
        self._keep(entry)
        signed = decision if reason is None and self.challenged else None
        self._appends.append(asyncio.create_task(self._append(entry, signed)))

    async def _append(self, entry: AuditEntry, signed: ReviewDecision | None) -> None:
        """Append a recorded review to the audit stream (behind its patch); a failure is a warning of the run."""
        warning = await self.audit_log.append(entry, signed=signed)
        if warning is not None:
            self.run.warn(warning)
        chain = self.audit_log.chain
        if chain.index:  # the run's own copy of its head, against which the stream is checked
            self.view.audit_records, self.view.audit_head = chain.index, chain.head

    async def drain(self) -> None:
        """Wait until every review recorded so far is on the audit stream (or its failure is a warning), and put
        each gate opening's summary of refused reviews beside the chain."""
        for tally in self._tallies.values():
            warning = await self.audit_log.summarize(tally)
            if warning is not None:
                self.run.warn(warning)
        self._tallies.clear()
        await self.audit_log.drain()
        chain = self.audit_log.chain
        if self.challenged and chain.index and self._memo != (chain.index, chain.head):
            # the head where `quantum audit verify` finds it without a worker to answer a query
            self._memo = (chain.index, chain.head)
            workflow.upsert_memo(
                {AUDIT_MEMO: {"records": chain.index, "head": chain.head, "execution": chain.execution}}
            )

    # --- opening -----------------------------------------------------------------------------------------------

    async def _load_keys(self) -> None:
        """The reviewers' public keys, asked of the worker when a gate opens and so recorded in the history."""
        try:
            answer: ReviewerKeys = await workflow.execute_activity_method(ReviewerKeysAgent.keys, **presets.QUICK)
        except FailureError as err:
            raise RunStopped("failed", f"the reviewers' keys could not be loaded: {failure_message(err)}") from err
        self.keys = (
            {normalise_identity(name): base64.b64decode(key) for name, key in answer.keys.items()}
            if answer.configured
            else None
        )
        try:
            self.defaults = {gate: GateRule.model_validate(rule) for gate, rule in answer.defaults.items()}
        except ValidationError as err:
            raise RunStopped("failed", f"the deployment's review defaults are invalid: {err}") from err
        self.groups = {name: list(members) for name, members in answer.groups.items()}
        self.max_validity_seconds = float(answer.max_validity_seconds or 0)
        self.keys_loaded = True
        if self.challenged and self.keys is not None and self._spent_elsewhere is None:
            self._spent_elsewhere = frozenset(await self.audit_log.spent_nonces())

    def _who(self, gate: str) -> dict[str, Any]:
        """Who may review ``gate`` and how many must approve, as the review events say it."""
        rule = self.rule(gate)
        return {
            "reviewers": list(rule.reviewers),
            "groups": list(rule.groups),
            "required_approvals": rule.required_approvals,
        }

    def _decided(self, gate: str) -> bool:
        return self.view.gates[gate] != "pending" or self.guard.flooded

    async def _wait_with_reminders(self, gate: str, timeout: float) -> None:
        """Wait for the gate's decision: a reminder at half its timeout, the escalation at 80 %, then expiry
        (``TimeoutError``). Workflow timers only: a replay waits the same way."""
        view = self.view
        waited = 0.0
        for share, event_type in (
            (REMINDER_AT, "quantum.review.reminder"),
            (ESCALATION_AT, "quantum.review.escalated"),
        ):
            try:
                await workflow.wait_condition(
                    lambda: self._decided(gate), timeout=timedelta(seconds=timeout * share - waited)
                )
                return
            except TimeoutError:
                waited = timeout * share
            fields = {
                "pipeline_id": view.pipeline_id,
                "gate": gate,
                "waited_seconds": round(waited, 3),
                "timeout_seconds": timeout,
                "approvals": len(view.approvals.get(gate, [])),
                **self._who(gate),
            }
            if event_type == "quantum.review.reminder":
                await self.run.announce(event_type, f"review.{gate}.reminder", ReviewReminder(**fields))
            else:
                metrics.gate_escalated(gate)
                contacts = list(self.policy.escalation_contacts)
                await self.run.announce(
                    event_type, f"review.{gate}.escalated", ReviewEscalated(**fields, contacts=contacts)
                )
        await workflow.wait_condition(lambda: self._decided(gate), timeout=timedelta(seconds=timeout - waited))

    async def _open(self, gate: str, stage: str, digest: str | None) -> None:
        """Load what the gate is judged with and bind it to what it asks about (runs with bound reviews)."""
        view = self.view
        await self._load_keys()
        self.rules[gate] = rule = gate_policy(gate, self.policy, defaults=self.defaults, groups=self.groups)
        problem = rule.unreachable(self.requester)
        if problem:
            view.stages[stage] = "failed"
            raise RunStopped("failed", f"gate {gate!r} {problem}: the approval policy cannot be met")
        previous = view.gate_digests.get(gate)
        if digest is not None:
            view.gate_digests[gate] = digest
            if previous and previous != digest and view.approvals.get(gate):
                self.run.warn(f"gate {gate!r}: approvals of {previous[:12]}… cleared, it now asks about {digest[:12]}…")
        if self.challenged:
            self._openings[gate] += 1
            self.guard.opened(gate)
            view.gate_challenges[gate] = gate_challenge(
                view.pipeline_id, workflow.info().run_id, gate, self._openings[gate], view.gate_digests.get(gate)
            )

    async def gate(self, gate: str, stage: str, *, reason: str, digest: str | None = None) -> None:
        """Open ``gate`` before ``stage`` and wait for its decision; stop the run unless it is approved.

        ``digest``: the sha256 of what the gate asks about; reviews naming another are refused, and approvals of
        content the gate asked about before (a gate opened again after regeneration) are cleared.
        """
        view = self.view
        if self.bound:
            await self._open(gate, stage, digest)
        view.gates[gate] = "pending"
        view.approvals[gate] = []
        view.pending_gate = gate
        opened = workflow.now()
        metrics.gate_opened(gate)
        view.stage = stage
        view.stages[stage] = "awaiting_review"
        view.status = "awaiting_review"
        view.outputs[f"{gate}_gate_reason"] = reason
        timeout = self.rule(gate).timeout_seconds
        view.gate_openings[gate] = GateOpening(
            opened_at=opened, timeout_seconds=timeout, required_approvals=self.rule(gate).required_approvals
        )
        bound_to = (
            {"digest": view.gate_digests.get(gate), "challenge": view.gate_challenges.get(gate)}
            if self.challenged
            else {}
        )
        await self.run.announce(
            "quantum.review.requested",
            f"review.{gate}.requested",
            ReviewRequested(
                pipeline_id=view.pipeline_id,
                gate=gate,
                reason=reason,
                timeout_seconds=timeout,
                **self._who(gate),
                **bound_to,
            ),
        )
        try:
            if taken(REMINDERS_PATCH):
                await self._wait_with_reminders(gate, timeout)
            else:
                await workflow.wait_condition(lambda: view.gates[gate] != "pending", timeout=timedelta(seconds=timeout))
        except TimeoutError:
            view.gates[gate] = "expired"
        except asyncio.CancelledError:
            metrics.gate_decided(gate, "cancelled", (workflow.now() - opened).total_seconds())
            raise
        finally:
            view.pending_gate = None
            if view.status == "awaiting_review":
                view.status = "running"
        if self.guard.flooded and view.gates[gate] == "pending":
            self._stop_flooded(gate, stage)
        state: GateState = view.gates[gate]
        metrics.gate_decided(gate, state, (workflow.now() - opened).total_seconds())
        if state == "rejected":
            view.stages[stage] = "failed"
            raise RunStopped("rejected", f"gate {gate!r} was rejected")
        if state in ("expired", "timed_out"):
            view.stages[stage] = "failed"
            raise RunStopped("timed_out", f"gate {gate!r} had no decision within {timeout:g} s")
        view.stages[stage] = "running"

    def _stop_flooded(self, gate: str, stage: str) -> None:
        """Stop a run whose history nears Temporal's limits while its gate waits (a flood of review signals)."""
        metrics.gate_decided(gate, "flooded", 0.0)
        self.view.stages[stage] = "failed"
        raise RunStopped("failed", ReviewGuard.why_stopped(gate, sum(self.view.refused_reviews.values())))
