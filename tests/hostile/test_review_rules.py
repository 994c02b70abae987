"""The review rules hold for any decision: the requester (in any case, width or spacing of their name) never counts
unless the gate's rule allows it, agents and services never count, a name outside a restricted policy never counts,
a review of other content never counts, every refusal is a short non-empty reason, and the same inputs always get
the same answer."""

from __future__ import annotations

import unicodedata
from typing import Any

from hypothesis import event, example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from events.models import (
    GATES,
    MAX_NAME_CHARS,
    ApprovalPolicy,
    GateRule,
    Person,
    ReviewDecision,
    normalise_identity,
)
from workflows.models import MAX_WARNING_CHARS
from workflows.reviews import GatePolicy, ReviewContext, gate_policy, is_service_identity, refusal

from .strategies import digests, hostile_text, printable

RUN = "pipeline-hostile"
PERSON: TypeAdapter[str] = TypeAdapter(Person)
Policies = tuple[ApprovalPolicy, dict[str, GateRule], dict[str, list[str]]]
"""A request's approval policy, the deployment's gate defaults and its reviewer groups."""
SERVICE_NAMES = [
    "QAgent",
    "QTest",
    "QCode",
    "QGen",
    "QSecure",
    "QInfra",
    "QDeploy",
    "QSRE",
    "system",
    "quantum",
    "root",
    "temporal",
    "worker",
    "bridge",
    "quantum-worker",
    "quantum.bridge",
    "quantum bridge",
    "system:cron",
    "agent:qagent",
    "service:deploy",
]
SPACES = [" ", "  ", "\u00a0", "\u3000", "\u2003", "\u205f", "\u2009"]
LIGATURES = {"fi": "\ufb01", "fl": "\ufb02", "ff": "\ufb00", "st": "\ufb06"}
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202a", "\u202e", "\u2066", "\u2069"]
"""Characters that show nothing: zero-width spaces and joiners, a soft hyphen, bidi embeddings and isolates."""

people = st.from_regex(r"[a-z]{2,10}( [a-z]{2,10})?", fullmatch=True).filter(lambda name: not is_service_identity(name))
gates = st.sampled_from(GATES)


def full_width(ch: str) -> str:
    return chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch


def math_bold(ch: str) -> str:
    if "a" <= ch <= "z":
        return chr(0x1D41A + ord(ch) - ord("a"))
    if "A" <= ch <= "Z":
        return chr(0x1D400 + ord(ch) - ord("A"))
    return ch


def circled(ch: str) -> str:
    return chr(0x24D0 + ord(ch) - ord("a")) if "a" <= ch <= "z" else ch


@st.composite
def look_alikes(draw: st.DrawFn, name: str) -> str:
    """``name`` as someone might type it to pass for another: case, full width, mathematical and circled letters,
    ligatures and odd spaces, each character on its own; the result is one person with ``name`` once normalised."""
    text = name
    for pair, ligature in LIGATURES.items():
        if pair in text and draw(st.booleans()):
            text = text.replace(pair, ligature)
    chars = []
    for ch in text:
        how = draw(st.sampled_from(["same", "upper", "lower", "full", "bold", "circled"]))
        if ch == " ":
            chars.append(draw(st.sampled_from(SPACES)))
        elif how == "upper":
            chars.append(ch.upper())
        elif how == "lower":
            chars.append(ch.lower())
        elif how == "full":
            chars.append(full_width(ch))
        elif how == "bold":
            chars.append(math_bold(ch))
        elif how == "circled":
            chars.append(circled(ch))
        else:
            chars.append(ch)
    before = draw(st.sampled_from(["", *SPACES]))
    after = draw(st.sampled_from(["", *SPACES]))
    variant = before + "".join(chars) + after
    assert normalise_identity(variant) == normalise_identity(name), (name, variant)
    return variant


@st.composite
def policies(
    draw: st.DrawFn, requester: str, gate: str
) -> tuple[ApprovalPolicy, dict[str, GateRule], dict[str, list[str]]]:
    """A request's approval policy, the deployment's defaults and its groups, any of which may name the requester
    (in any form) and say whether the requester may review."""
    named = st.one_of(people, look_alikes(requester))
    reviewers = draw(st.lists(named, max_size=4))
    group_names = draw(st.lists(st.sampled_from(["release", "security", "ops"]), max_size=2, unique=True))
    directory = {name: draw(st.lists(named, max_size=3)) for name in ("release", "security")}
    may = st.sampled_from([None, True, False])
    rule = None
    if draw(st.booleans()):
        rule = GateRule(
            reviewers=draw(st.one_of(st.none(), st.lists(named, max_size=3))),
            groups=draw(st.one_of(st.none(), st.lists(st.sampled_from(["release", "ops"]), max_size=2))),
            requester_may_review=draw(may),
        )
    policy = ApprovalPolicy(
        reviewers=reviewers,
        groups=group_names,
        requester_may_review=draw(may),
        gates={gate: rule} if rule else {},
    )
    defaults = {gate: GateRule(requester_may_review=draw(may))} if draw(st.booleans()) else {}
    return policy, defaults, directory


def context(
    requester: str, policy: ApprovalPolicy, rule: GatePolicy | None, *, digest: str | None = None, **changed: Any
) -> ReviewContext:
    fields: dict[str, Any] = {
        "run_id": RUN,
        "requester": requester,
        "policy": policy,
        "gate_state": "pending",
        "digest": digest,
        "rule": rule,
    }
    fields.update(changed)
    return ReviewContext(**fields)


def allowed_person(rule: GatePolicy, requester: str, name: str) -> bool:
    """Whether the rules let ``name`` review the gate: a person the policy allows, and not the requester unless the
    rule lets the requester review."""
    who = normalise_identity(name)
    if is_service_identity(name):
        return False
    if who == normalise_identity(requester) and not rule.requester_may_review:
        return False
    return not rule.restricted or who in rule.allowed()


def is_person(name: str) -> bool:
    """Whether a policy may name ``name`` (a request's policy is validated before any run sees it)."""
    try:
        PERSON.validate_python(name)
    except ValidationError:
        return False
    return True


def assert_reason(reason: str | None) -> str:
    assert isinstance(reason, str) and reason.strip(), "a refusal says why"
    assert len(reason) <= MAX_WARNING_CHARS
    return reason


# --- the requester ---------------------------------------------------------------------------------------------------


@given(data=st.data(), requester=people, gate=gates, digest=digests)
def test_the_requester_counts_only_where_the_gate_rule_allows_it(
    data: st.DataObject, requester: str, gate: str, digest: str
) -> None:
    policy, defaults, directory = data.draw(policies(requester, gate), label="policy")
    rule = gate_policy(gate, policy, defaults=defaults, groups=directory)
    variant = data.draw(look_alikes(requester), label="reviewer")
    decision = ReviewDecision(gate=gate, reviewer=variant, approved=data.draw(st.booleans()), digest=digest)
    reason = refusal(decision, context(requester, policy, rule, digest=digest))
    if is_service_identity(variant):  # `QAbc` for the requester `qabc`: agent-shaped, never counts either
        event("agent-shaped")
        assert "agent or service identity" in assert_reason(reason)
    elif not rule.requester_may_review:
        event("the requester may not review")
        assert "requested this run" in assert_reason(reason)
    elif not rule.restricted or normalise_identity(requester) in rule.allowed():
        event("the requester may review and is allowed")
        assert reason is None, reason  # allowed, and nothing else stands in the way
    else:
        event("the requester may review but is not named")
        assert "not a reviewer allowed" in assert_reason(reason)
    if defaults.get(gate) and defaults[gate].requester_may_review is False:
        assert reason is not None, "a deployment that says no cannot be overridden by the request"


@given(
    name=st.one_of(people.map(lambda n: (n, True)), st.sampled_from(SERVICE_NAMES).map(lambda n: (n, False))),
    invisible=st.sampled_from(INVISIBLE),
    at=st.integers(0, 30),
)
@example(name=("ann", True), invisible="\u200b", at=3)
def test_invisible_characters_do_not_make_another_person(name: tuple[str, bool], invisible: str, at: int) -> None:
    base, is_requester = name
    at = min(at, len(base))
    reviewer = base[:at] + invisible + base[at:]
    requester = base if is_requester else "ann"
    policy = ApprovalPolicy()
    decision = ReviewDecision(gate="deploy", reviewer=reviewer, approved=True)
    assert_reason(refusal(decision, context(requester, policy, gate_policy("deploy", policy))))


@given(name=people, invisible=st.sampled_from(INVISIBLE), gate=gates)
@example(name="bob", invisible="\u200b", gate="deploy")
def test_one_person_never_approves_a_gate_twice(name: str, invisible: str, gate: str) -> None:
    policy = ApprovalPolicy(required_approvals={gate: 2})
    decision = ReviewDecision(gate=gate, reviewer=name + invisible, approved=True)
    ctx = context("ann", policy, gate_policy(gate, policy), approvals=(name,))
    assert_reason(refusal(decision, ctx))


# --- agents and services ---------------------------------------------------------------------------------------------


@given(data=st.data(), name=st.sampled_from(SERVICE_NAMES), gate=gates, may=st.booleans())
def test_agents_and_services_never_count_even_when_a_policy_names_them(
    data: st.DataObject, name: str, gate: str, may: bool
) -> None:
    variant = data.draw(look_alikes(name), label="reviewer")
    policy = ApprovalPolicy(reviewers=[name, variant, "erin"], requester_may_review=may)
    rule = gate_policy(gate, policy, groups={})
    decision = ReviewDecision(gate=gate, reviewer=variant, approved=True)
    reason = refusal(decision, context(data.draw(st.sampled_from([name, "ann"])), policy, rule))
    assert "agent or service identity" in assert_reason(reason)
    assert rule.unreachable("ann") is None  # erin alone can still approve: the gate is not stuck


@given(
    name=st.from_regex(r"Q[A-Z][a-z]{1,8}", fullmatch=True),
    widths=st.lists(st.booleans(), min_size=10, max_size=10),
)
@example(name="QBuild", widths=[True] * 10)
def test_an_agent_shaped_name_is_an_agent_in_any_width(name: str, widths: list[bool]) -> None:
    variant = "".join(full_width(ch) if widths[i] or i == 0 else ch for i, ch in enumerate(name))
    assert unicodedata.normalize("NFKC", variant) == name
    assert is_service_identity(name)
    policy = ApprovalPolicy()
    decision = ReviewDecision(gate="deploy", reviewer=variant, approved=True)
    assert_reason(refusal(decision, context("ann", policy, gate_policy("deploy", policy))))


# --- who the policy allows --------------------------------------------------------------------------------------------


@given(
    data=st.data(),
    requester=people,
    gate=gates,
    reviewer=st.one_of(people, hostile_text, st.text(printable, min_size=1, max_size=30)),
)
def test_a_restricted_gate_counts_exactly_the_people_its_policy_allows(
    data: st.DataObject, requester: str, gate: str, reviewer: str
) -> None:
    person = st.one_of(people, st.just(reviewer)) if is_person(reviewer) else people
    listed = data.draw(st.lists(person, min_size=1, max_size=4), label="reviewers")
    members = data.draw(st.lists(st.one_of(people, st.just(reviewer)), max_size=3), label="members")
    policy = ApprovalPolicy(
        reviewers=listed,
        groups=data.draw(st.lists(st.sampled_from(["release", "unknown"]), max_size=2, unique=True)),
        requester_may_review=data.draw(st.sampled_from([None, True, False])),
    )
    rule = gate_policy(gate, policy, groups={"release": members})
    assert rule.restricted
    decision = ReviewDecision(gate=gate, reviewer=reviewer, approved=True)
    reason = refusal(decision, context(requester, policy, rule))
    if decision.problem() is not None or not allowed_person(rule, requester, reviewer):
        event("refused")
        assert_reason(reason)
    else:
        event("counted")
        assert reason is None, reason
    if normalise_identity(reviewer) not in rule.allowed():
        assert reason is not None


# --- any decision ----------------------------------------------------------------------------------------------------


@given(
    requester=people,
    reviewer=st.one_of(people, hostile_text, st.text(max_size=MAX_NAME_CHARS + 10)),
    gate=st.one_of(gates, st.text(max_size=40)),
    gate_state=st.sampled_from(["pending", "approved", "rejected", "expired", "timed_out", None]),
    digest=st.one_of(st.none(), digests, st.text(max_size=200)),
    gate_digest=st.one_of(st.none(), digests),
    approvals=st.lists(st.one_of(people, hostile_text), max_size=3),
    comment=st.text(max_size=2100),
    policy=st.sampled_from(
        [ApprovalPolicy(), ApprovalPolicy(reviewers=["erin", "bob"]), ApprovalPolicy(requester_may_review=True)]
    ),
)
def test_any_decision_gets_a_reason_or_counts_and_always_the_same_answer(
    requester: str,
    reviewer: str,
    gate: str,
    gate_state: Any,
    digest: str | None,
    gate_digest: str | None,
    approvals: list[str],
    comment: str,
    policy: ApprovalPolicy,
) -> None:
    decision = ReviewDecision(gate=gate, reviewer=reviewer, approved=True, comment=comment, digest=digest)
    rule = gate_policy(gate, policy) if gate in GATES else None
    ctx = context(requester, policy, rule, digest=gate_digest, gate_state=gate_state, approvals=tuple(approvals))
    reason = refusal(decision, ctx)
    again = refusal(
        ReviewDecision.model_validate(decision.model_dump()),
        context(requester, policy, rule, digest=gate_digest, gate_state=gate_state, approvals=tuple(approvals)),
    )
    assert reason == again == refusal(decision, ctx)
    if reason is not None:
        assert_reason(reason)
    must_refuse = (
        decision.problem() is not None
        or gate not in GATES
        or gate_state != "pending"
        or (digest is not None and digest != gate_digest)
        or normalise_identity(reviewer) in {normalise_identity(name) for name in approvals}
        or (rule is not None and not allowed_person(rule, requester, reviewer))
    )
    event("refused" if must_refuse else "counted")
    assert (reason is not None) == must_refuse, (reason, decision)


@given(reviewer=people, gate=gates, signature=st.sampled_from([None, "", "AAAA"]), nonce=st.sampled_from([None, ""]))
def test_with_keys_configured_an_unsigned_review_never_counts(
    reviewer: str, gate: str, signature: str | None, nonce: str | None
) -> None:
    policy = ApprovalPolicy()
    decision = ReviewDecision(gate=gate, reviewer=reviewer, approved=True, signature=signature, nonce=nonce)
    ctx = context("ann", policy, gate_policy(gate, policy), keys={normalise_identity(reviewer): b"\x00" * 32})
    assert "unsigned" in assert_reason(refusal(decision, ctx))
