"""Review gates and the rules a review must pass, in one place.

:func:`refusal` is the rule book: a pure function of the review and of what the run knows (the gate's state, its
approvals and digest, the policy, the requester, the reviewers' public keys, the time). The ``review`` signal, the
``review`` Update's validator and its handler all ask it, so a review is judged the same whichever way it came.

Where signatures are verified, and why that is deterministic: in workflow code, by :func:`events.signing.verify`
(Ed25519, pure computation). The public keys do not come from the worker's memory but from the history: when a gate
opens, the run asks the ``reviews.keys`` activity for them and keeps the result, which Temporal records; a replay
reads the same keys back from the history, so it reaches the same decisions whatever keys the replaying worker has.
The time is ``workflow.now()`` (the workflow task's time, recorded). Each accepted review's audit entry names the key
that verified it (``ed25519:<name>``), or ``unauthenticated`` when the deployment configures no keys.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError

from workflows.patches import BOUND_REVIEWS_PATCH, REMINDERS_PATCH, REVIEW_RULES_PATCH, taken

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from agents.reviewers import ReviewerKeys, ReviewerKeysAgent
    from events import signing
    from events.catalog import ReviewEscalated, ReviewReminder, ReviewRequested
    from events.models import (
        DEFAULT_GATE_TIMEOUT_SECONDS,
        GATES,
        REVIEW_REFUSED,
        ApprovalPolicy,
        GateRule,
        ReviewDecision,
        normalise_identity,
        visible_form,
    )
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
    from workflows.runview import RunStopped, RunView, failure_message

REMINDER_AT = 0.5
ESCALATION_AT = 0.8
NUDGES = ((REMINDER_AT, "quantum.review.reminder"), (ESCALATION_AT, "quantum.review.escalated"))

UNAUTHENTICATED = "unauthenticated"
REFUSED = REVIEW_REFUSED
UPDATE_UNSUPPORTED = "ReviewUpdateUnsupported"

_SERVICE_NAMES = frozenset(
    {
        "system",
        "quantum",
        "root",
        "qagent",
        "qtest",
        "qcode",
        "qgen",
        "qsecure",
        "qinfra",
        "qdeploy",
        "qsre",
        "temporal",
        "worker",
        "bridge",
    }
)
_AGENT_SHAPE = re.compile(r"^Q[A-Z][A-Za-z]*$")


def is_service_identity(name: str) -> bool:
    """Whether ``name`` names an agent or a service (``QAgent``, ``QTest``, ``quantum-*``, ``system``...), which
    never counts as a reviewer."""
    who = normalise_identity(name)
    return (
        who in _SERVICE_NAMES
        or bool(_AGENT_SHAPE.match(visible_form(name).strip()))
        or who.startswith(("quantum-", "quantum.", "quantum ", "system:", "agent:", "service:"))
    )


def digest_of(value: Any) -> str:
    """The sha256 (hex) of ``value`` as sorted-key JSON without spaces."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class GatePolicy:
    """One gate's rule as the run applies it: the request's policy over the deployment's defaults."""

    reviewers: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    members: frozenset[str] = frozenset()
    """The normalised names of the groups' members (as the deployment defines the groups)."""
    unknown_groups: tuple[str, ...] = ()
    required_approvals: int = 1
    timeout_seconds: float = DEFAULT_GATE_TIMEOUT_SECONDS
    requester_may_review: bool = False

    @property
    def restricted(self) -> bool:
        """Whether only named people and groups may review (else anyone who is not the requester)."""
        return bool(self.reviewers or self.groups)

    def allowed(self, same: Callable[[str], str] = normalise_identity) -> frozenset[str]:
        return frozenset(same(name) for name in self.reviewers) | self.members

    def describe(self) -> str:
        parts = [", ".join(self.reviewers)] if self.reviewers else []
        parts += [f"group {name}" for name in self.groups]
        return "; ".join(parts) or "anyone"

    def unreachable(self, requester: str) -> str | None:
        """Why the gate can never reach its quorum (too few people may review it), or None."""
        if not self.restricted:
            return None
        allowed = self.allowed()
        if not self.requester_may_review:
            allowed -= {normalise_identity(requester)}
        allowed = frozenset(name for name in allowed if not is_service_identity(name))
        if len(allowed) >= self.required_approvals:
            return None
        unknown = f" (unknown groups: {', '.join(self.unknown_groups)})" if self.unknown_groups else ""
        count, people = self.required_approvals, len(allowed)
        return (
            f"needs {count} approval{'s' if count != 1 else ''} but only {people} "
            f"{'person' if people == 1 else 'people'} may review it{unknown}"
        )


def gate_policy(
    gate: str,
    policy: ApprovalPolicy,
    *,
    defaults: Mapping[str, GateRule] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> GatePolicy:
    """The rule of ``gate``: each field from the request's rule of that gate, else its run-wide policy, else the
    deployment's default for the gate (``QUANTUM_REVIEW_DEFAULTS``). The default quorum is also a floor, and a
    default of ``requester_may_review: false`` is never overridden. Who may review is taken whole from the first
    of the three that names anyone (names or groups). Pure."""
    rule = policy.gates.get(gate)  # type: ignore[call-overload]
    default = (defaults or {}).get(gate) or GateRule()
    if rule is not None and (rule.reviewers is not None or rule.groups is not None):
        names, named_groups = rule.reviewers or [], rule.groups or []
    elif policy.reviewers or policy.groups:
        names, named_groups = policy.reviewers, policy.groups
    else:
        names, named_groups = default.reviewers or [], default.groups or []
    directory = groups or {}
    members = frozenset(normalise_identity(m) for g in named_groups for m in directory.get(g, ()))
    asked = rule.required_approvals if rule is not None else None
    if asked is None:
        asked = policy.required_approvals.get(gate)  # type: ignore[call-overload]
    quorum = max(int(asked or default.required_approvals or 1), int(default.required_approvals or 1))
    timeout = rule.timeout_seconds if rule is not None else None
    if timeout is None:
        timeout = policy.timeout_seconds.get(gate)  # type: ignore[call-overload]
    may: bool | None = rule.requester_may_review if rule is not None else None
    if may is None:
        may = policy.requester_may_review
    if may is None:
        may = default.requester_may_review
    return GatePolicy(
        reviewers=tuple(names),
        groups=tuple(named_groups),
        members=members,
        unknown_groups=tuple(g for g in named_groups if g not in directory),
        required_approvals=quorum,
        timeout_seconds=float(timeout or default.timeout_seconds or DEFAULT_GATE_TIMEOUT_SECONDS),
        requester_may_review=bool(may) and default.requester_may_review is not False,
    )


@dataclass(frozen=True)
class ReviewContext:
    """What the run knows when a review arrives; :func:`refusal` reads nothing else."""

    run_id: str
    requester: str
    policy: ApprovalPolicy
    gate_state: GateState | None
    approvals: Sequence[str] = ()
    digest: str | None = None
    keys: Mapping[str, bytes] | None = None
    now: datetime | None = None
    used_nonces: frozenset[str] = field(default_factory=frozenset)
    normalised: bool = True
    bound: bool = True
    """The rules of :data:`BOUND_REVIEWS_PATCH`: agent identities, digests, signatures."""
    rule: GatePolicy | None = None
    """The gate's rule; None: the one ``policy`` alone gives (no deployment defaults, no groups)."""


def signed_message(decision: ReviewDecision, run_id: str) -> bytes:
    """The bytes a reviewer signs: the review's canonical form for ``run_id``."""
    return signing.canonical(
        run_id=run_id,
        gate=decision.gate,
        digest=decision.digest,
        reviewer=decision.reviewer,
        approved=decision.approved,
        comment=decision.comment,
        nonce=decision.nonce,
        expires_at=decision.expires_at,
    )


def _authentication_problem(decision: ReviewDecision, ctx: ReviewContext) -> str | None:
    keys = ctx.keys
    assert keys is not None
    if not (decision.signature and decision.nonce and decision.expires_at):
        missing = [n for n in ("signature", "nonce", "expires_at") if not getattr(decision, n)]
        return f"the review is unsigned: this deployment takes only signed reviews (missing {', '.join(missing)})"
    key = keys.get(normalise_identity(decision.reviewer))
    if key is None:
        return f"no public key is configured for {decision.reviewer!r}"
    message = signed_message(decision, ctx.run_id)
    if not signing.verify(key, message, decision.signature):
        return f"the signature does not verify with the key of {decision.reviewer!r} (altered, or another key)"
    expiry = signing.parse_expiry(decision.expires_at)
    if expiry is None:
        return "expires_at is not an ISO 8601 time with a time zone"
    if ctx.now is not None and ctx.now >= expiry:
        return f"the review expired at {decision.expires_at}"
    if decision.nonce in ctx.used_nonces:
        return "the nonce was already used in this run: a replayed review"
    return None


def refusal(decision: ReviewDecision, ctx: ReviewContext) -> str | None:
    """Why the run refuses ``decision``, or None when it counts. Pure: the same inputs, the same answer."""
    normalised = ctx.normalised
    if normalised:
        problem = decision.problem()
        if problem:
            return problem
    gate = decision.gate
    if gate not in GATES:
        return f"unknown gate {gate!r}; gates are {', '.join(GATES)}"
    if ctx.gate_state != "pending":
        return f"gate {gate!r} is not pending"
    if ctx.bound and ctx.keys is not None:
        problem = _authentication_problem(decision, ctx)
        if problem:
            return problem
    if ctx.bound and is_service_identity(decision.reviewer):
        return f"{decision.reviewer!r} is an agent or service identity: only people review gates"
    same = normalise_identity if normalised else (lambda name: name)
    who = same(decision.reviewer)
    rule = ctx.rule or gate_policy(gate, ctx.policy)
    if who == same(ctx.requester) and not rule.requester_may_review:
        return f"{decision.reviewer!r} requested this run and cannot review it"
    if rule.restricted and who not in rule.allowed(same):
        return (
            f"{decision.reviewer!r} is not a reviewer allowed by the approval policy of gate {gate!r} "
            f"({clip(rule.describe(), 300)})"
        )
    if who in {same(name) for name in ctx.approvals}:
        return f"{decision.reviewer!r} already approved gate {gate!r}"
    if ctx.bound:
        if decision.digest is not None and decision.digest != ctx.digest:
            asks = f"{ctx.digest[:12]}…" if ctx.digest else "no digest"
            return f"the review names digest {decision.digest[:12]}… but gate {gate!r} asks about {asks}: stale"
        if ctx.keys is not None and ctx.digest and decision.digest is None:
            return f"a signed review must name the digest of what gate {gate!r} asks about"
    return None


_REFUSAL_KINDS: tuple[tuple[str, str], ...] = (
    ("the review is unsigned", "unsigned"),
    ("no public key is configured", "unknown_key"),
    ("does not verify", "bad_signature"),
    ("expires_at is not", "bad_signature"),
    ("the review expired", "expired"),
    ("a replayed review", "replayed"),
    ("agent or service identity", "service_identity"),
    ("requested this run", "requester"),
    ("not a reviewer allowed", "not_allowed"),
    ("already approved", "duplicate"),
    (": stale", "stale"),
    ("must name the digest", "stale"),
    ("is not pending", "not_pending"),
    ("unknown gate", "unknown_gate"),
)


def refusal_kind(reason: str) -> str:
    """The kind of a refusal reason (a bounded metric label): ``unsigned``, ``stale``, ``requester``...;
    ``invalid`` for a field out of its bounds."""
    return next((kind for fragment, kind in _REFUSAL_KINDS if fragment in reason), "invalid")


def identity(decision: ReviewDecision, ctx: ReviewContext) -> str:
    """How the reviewer is known: ``unauthenticated`` without keys, ``ed25519:<name>`` when the signature verifies
    with that reviewer's key, empty otherwise."""
    if ctx.keys is None:
        return UNAUTHENTICATED
    if decision.signature is None:
        return ""
    name = normalise_identity(decision.reviewer)
    key = ctx.keys.get(name)
    if key is None:
        return ""
    message = signed_message(decision, ctx.run_id)
    return f"ed25519:{name}" if signing.verify(key, message, decision.signature) else ""


class Gates:
    """A run's review gates with their policy: opening one, judging and recording reviews, the verdict."""

    def __init__(self, run: RunView, *, policy: ApprovalPolicy, requester: str) -> None:
        self.run = run
        self.view = run.view
        self.policy = policy
        self.requester = requester
        self.bound: bool | None = None
        """Whether the run follows :data:`BOUND_REVIEWS_PATCH` (None until the run starts)."""
        self.keys: dict[str, bytes] | None = None
        self.keys_loaded = False
        self.defaults: dict[str, GateRule] = {}
        self.groups: dict[str, list[str]] = {}
        """The deployment's gate defaults and reviewer groups, recorded with the keys when a gate opens."""
        self.rules: dict[str, GatePolicy] = {}
        self.audit_log = AuditLog(run.view.pipeline_id)
        """The run's hash chain on ``QUANTUM_AUDIT``: every recorded review is appended to it, in order."""
        self._appends: list[asyncio.Task[None]] = []

    def begin(self) -> None:
        """Take the patch once, in the run's main coroutine (handlers and validators read it from here)."""
        self.bound = taken(BOUND_REVIEWS_PATCH)

    # --- judging -----------------------------------------------------------------------------------------------

    def rule(self, gate: str) -> GatePolicy:
        """The rule of ``gate``: as resolved when it opened, else from the request's policy alone."""
        return self.rules.get(gate) or gate_policy(gate, self.policy)

    def context(self, gate: str, *, normalised: bool) -> ReviewContext:
        bound = bool(self.bound)
        # spent: the nonces of counted reviews and of refused ones whose signature verified (a signed review
        # refused once, say before its gate opened, cannot be sent again to count later)
        used = frozenset(e.nonce for e in self.view.audit if e.nonce and (e.accepted or e.identity))
        return ReviewContext(
            run_id=self.view.pipeline_id,
            requester=self.requester,
            policy=self.policy,
            gate_state=self.view.gates.get(gate),
            approvals=tuple(self.view.approvals.get(gate, [])),
            digest=self.view.gate_digests.get(gate) if bound else None,
            keys=self.keys if bound else None,
            now=workflow.now() if bound else None,
            used_nonces=used,
            normalised=normalised,
            bound=bound,
            rule=self.rule(gate),
        )

    def judge(self, decision: ReviewDecision) -> tuple[str | None, ReviewContext]:
        if self.bound:
            ctx = self.context(decision.gate, normalised=True)
        else:  # exactly as recorded before: the patch asked at each review
            ctx = self.context(decision.gate, normalised=taken(REVIEW_RULES_PATCH))
        return refusal(decision, ctx), ctx

    def review(self, decision: ReviewDecision) -> str | None:
        """Apply a review (the signal, and the Update's handler): count it, or refuse it with the reason in the
        audit trail. Returns the reason of a refusal."""
        reason, ctx = self.judge(decision)
        self.record_review(decision, reason, identity(decision, ctx) if self.bound and self.keys_loaded else "")
        if reason is not None:
            workflow.logger.info("review refused: %s", reason)
            metrics.review_refused(refusal_kind(reason))
            return reason
        gate = decision.gate
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
        reason, _ = self.judge(decision)
        if reason is not None:
            metrics.review_refused(refusal_kind(reason))
            raise ApplicationError(reason, type=REFUSED, non_retryable=True)

    def update(self, decision: ReviewDecision) -> ReviewVerdict:
        """The Update's handler: the review is applied (judged again: a review accepted by the validator may meet
        another that counted first) and the verdict returned."""
        reason = self.review(decision)
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

    def record_review(self, decision: ReviewDecision, reason: str | None, who: str = "") -> None:
        """Append the review to the audit trail (the one place reviews are recorded): refused ones are clipped and
        at most ``MAX_REFUSED_REVIEWS`` are kept (the oldest refused go first, unsigned ones before signed ones,
        whose nonces stay spent; counted in ``audit_dropped``); accepted ones are always kept."""
        limit = MAX_REFUSED_COMMENT_CHARS if reason is not None else len(decision.comment)
        entry = AuditEntry(
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
        audit = self.view.audit
        audit.append(entry)
        refused = [i for i, e in enumerate(audit) if not e.accepted]
        if len(refused) > MAX_REFUSED_REVIEWS:
            unsigned = [i for i in refused if not audit[i].identity]
            del audit[(unsigned or refused)[0]]
            self.view.audit_dropped += 1
        self._appends.append(asyncio.create_task(self._append(entry)))

    async def _append(self, entry: AuditEntry) -> None:
        """Append a recorded review to the audit stream (behind its patch); a failure is a warning of the run."""
        warning = await self.audit_log.append(entry)
        if warning is not None:
            self.run.warn(warning)
        chain = self.audit_log.chain
        if chain.index:  # the run's own copy of its head, against which the stream is checked
            self.view.audit_records, self.view.audit_head = chain.index, chain.head

    async def drain(self) -> None:
        """Wait until every review recorded so far is on the audit stream (or its failure is a warning)."""
        await self.audit_log.drain()

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
        self.keys_loaded = True

    def _who(self, gate: str) -> dict[str, Any]:
        """Who may review ``gate`` and how many must approve, as the review events say it."""
        rule = self.rule(gate)
        return {
            "reviewers": list(rule.reviewers),
            "groups": list(rule.groups),
            "required_approvals": rule.required_approvals,
        }

    async def _wait_with_reminders(self, gate: str, timeout: float) -> None:
        """Wait for the gate's decision: a reminder at half its timeout, the escalation at 80 %, then expiry
        (``TimeoutError``). Workflow timers only: a replay waits the same way."""
        view = self.view
        decided = lambda: view.gates[gate] != "pending"  # noqa: E731
        waited = 0.0
        for share, event_type in (
            (REMINDER_AT, "quantum.review.reminder"),
            (ESCALATION_AT, "quantum.review.escalated"),
        ):
            try:
                await workflow.wait_condition(decided, timeout=timedelta(seconds=timeout * share - waited))
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
        await workflow.wait_condition(decided, timeout=timedelta(seconds=timeout - waited))

    async def gate(self, gate: str, stage: str, *, reason: str, digest: str | None = None) -> None:
        """Open ``gate`` before ``stage`` and wait for its decision; stop the run unless it is approved.

        ``digest``: the sha256 of what the gate asks about; reviews naming another are refused, and approvals of
        content the gate asked about before (a gate opened again after regeneration) are cleared.
        """
        view = self.view
        if self.bound:
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
                    self.run.warn(
                        f"gate {gate!r}: approvals of {previous[:12]}… cleared, it now asks about {digest[:12]}…"
                    )
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
        await self.run.announce(
            "quantum.review.requested",
            f"review.{gate}.requested",
            ReviewRequested(
                pipeline_id=view.pipeline_id, gate=gate, reason=reason, timeout_seconds=timeout, **self._who(gate)
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
        state: GateState = view.gates[gate]
        metrics.gate_decided(gate, state, (workflow.now() - opened).total_seconds())
        if state == "rejected":
            view.stages[stage] = "failed"
            raise RunStopped("rejected", f"gate {gate!r} was rejected")
        if state in ("expired", "timed_out"):
            view.stages[stage] = "failed"
            raise RunStopped("timed_out", f"gate {gate!r} had no decision within {timeout:g} s")
        view.stages[stage] = "running"
