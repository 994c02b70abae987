"""The rule book of review gates: pure functions of a review and of what the run knows (the gate's state, its
approvals, digest and challenge, the policy, the requester, the reviewers' public keys, the time).

:func:`refusal` and :func:`identity` are the rules of runs recorded before gate challenges (kept as they were, so
those runs replay to the same decisions); :func:`judge` is the rule book of every run since: the checks that cost
nothing come first, and the signature, the one check that costs real work, is verified last and once, so a flood of
reviews that fail a cheap check costs no cryptography at all.

Where signatures are verified, and why that is deterministic: in workflow code, by :func:`events.signing.verify`
(Ed25519, pure computation). The public keys do not come from the worker's memory but from the history: when a gate
opens, the run asks the ``reviews.keys`` activity for them and keeps the result, which Temporal records; a replay
reads the same keys back from the history, so it reaches the same decisions whatever keys the replaying worker has.
The time is ``workflow.now()`` (the workflow task's time, recorded).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from events import signing
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
    from workflows.models import GateState, clip

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
    challenge: str | None = None
    """What a signed review of this opening of the gate must sign (runs with challenges)."""
    max_validity_seconds: float = 0.0
    """How far past ``now`` a signed review's ``expires_at`` may lie (0: no bound, as in older runs)."""
    may_verify: bool = True
    """False when the gate's budget of signature checks on the signal path is spent."""
    verify: Callable[[bytes, bytes, str], bool] | None = None
    """How signatures are checked (a cache in front of :func:`events.signing.verify`); None: pure Python."""


def signed_message(decision: ReviewDecision, run_id: str) -> bytes:
    """The bytes a reviewer signs: the review's canonical form for ``run_id`` (with its challenge, when given)."""
    return signing.review_message(decision, run_id)


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
    ("too many reviews with bad signatures", "signature_budget"),
    ("expires_at too far ahead", "too_long_valid"),
    ("a review of another run", "stale"),
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


BAD_SIGNATURE = "does not verify"
TOO_MANY_BAD_SIGNATURES = "too many reviews with bad signatures"


@dataclass(frozen=True)
class Judgement:
    """What :func:`judge` decided: the reason of a refusal (None: the review counts) and how the reviewer is known
    (``ed25519:<name>`` once the signature verified, ``unauthenticated`` without keys, else empty)."""

    reason: str | None
    identity: str = ""
    verified: bool = False
    """Whether a signature check was spent on it (and failed, when ``reason`` is set)."""


def _policy_problem(decision: ReviewDecision, ctx: ReviewContext) -> str | None:
    """The checks that cost nothing: the gate, who reviews, what they reviewed."""
    gate = decision.gate
    if gate not in GATES:
        return f"unknown gate {gate!r}; gates are {', '.join(GATES)}"
    if ctx.gate_state != "pending":
        return f"gate {gate!r} is not pending"
    if is_service_identity(decision.reviewer):
        return f"{decision.reviewer!r} is an agent or service identity: only people review gates"
    who = normalise_identity(decision.reviewer)
    rule = ctx.rule or gate_policy(gate, ctx.policy)
    if who == normalise_identity(ctx.requester) and not rule.requester_may_review:
        return f"{decision.reviewer!r} requested this run and cannot review it"
    if rule.restricted and who not in rule.allowed():
        return (
            f"{decision.reviewer!r} is not a reviewer allowed by the approval policy of gate {gate!r} "
            f"({clip(rule.describe(), 300)})"
        )
    if who in {normalise_identity(name) for name in ctx.approvals}:
        return f"{decision.reviewer!r} already approved gate {gate!r}"
    if decision.digest is not None and decision.digest != ctx.digest:
        asks = f"{ctx.digest[:12]}…" if ctx.digest else "no digest"
        return f"the review names digest {decision.digest[:12]}… but gate {gate!r} asks about {asks}: stale"
    return None


def _signed_fields_problem(decision: ReviewDecision, ctx: ReviewContext) -> str | None:
    """The checks of a signed review that cost nothing: every signed field there, bound to this opening, in time."""
    problem = signing.unsigned_problem(decision)
    if problem:
        return problem
    if ctx.digest and decision.digest is None:
        return f"a signed review must name the digest of what gate {decision.gate!r} asks about"
    if decision.challenge != ctx.challenge:
        issued = f"{ctx.challenge[:12]}…" if ctx.challenge else "none"
        return (
            f"the review signs challenge {str(decision.challenge)[:12]}… but this opening of gate {decision.gate!r} "
            f"issued {issued}: a review of another run or of an earlier opening (stale)"
        )
    assert decision.expires_at is not None
    problem = signing.expiry_problem(decision.expires_at, ctx.now, ctx.max_validity_seconds)
    if problem:
        return problem
    if decision.nonce in ctx.used_nonces:
        return "the nonce was already used: a replayed review"
    return None


def judge(decision: ReviewDecision, ctx: ReviewContext) -> Judgement:
    """Judge ``decision`` by the rules of runs with gate challenges. Pure; the signature is checked last, at most
    once, and only when ``ctx.may_verify``."""
    problem = decision.problem() or _policy_problem(decision, ctx)
    if problem:
        return Judgement(problem)
    if ctx.keys is None:
        return Judgement(None, UNAUTHENTICATED)
    problem = _signed_fields_problem(decision, ctx)
    if problem:
        return Judgement(problem)
    who = normalise_identity(decision.reviewer)
    key = ctx.keys.get(who)
    if key is None:
        return Judgement(f"no public key is configured for {decision.reviewer!r}")
    if not ctx.may_verify:
        return Judgement(
            f"{TOO_MANY_BAD_SIGNATURES} at gate {decision.gate!r}: the review signal is no longer checked at this "
            "opening; send the review as the review Update (quantum review does)"
        )
    assert decision.signature is not None
    verify = ctx.verify or signing.verify
    if not verify(key, signed_message(decision, ctx.run_id), decision.signature):
        return Judgement(
            f"the signature does not verify with the key of {decision.reviewer!r} (altered, or another key)",
            verified=True,
        )
    return Judgement(None, f"ed25519:{who}", verified=True)


def gate_challenge(workflow_id: str, execution: str, gate: str, opening: int, digest: str | None) -> str:
    """The challenge of one opening of ``gate``: unique to the run's execution (Temporal's run id, which a reset or
    a new run under the same workflow id changes), the gate, the opening and the content it asks about."""
    parts = ("quantum-gate-challenge", workflow_id, execution, gate, str(opening), digest or "")
    return hashlib.sha256("\x00".join(parts).encode("utf-8", errors="surrogatepass")).hexdigest()[:48]
