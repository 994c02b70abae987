"""The review rules as a pure function: every refusal with its reason, signatures included (no server)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agents.reviewers import KeyFileError, load_public_keys
from events import signing
from events.models import ApprovalPolicy, GateRule, ReviewDecision, ReviewInput
from workflows.reviews import ReviewContext, gate_policy, identity, is_service_identity, refusal

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DIGEST = "ab" * 32
RUN = "pipeline-1"


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


BOB, CAROL = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
KEYS = {"bob": raw(BOB), "carol": raw(CAROL)}


def ctx(**overrides: object) -> ReviewContext:
    fields: dict[str, object] = {
        "run_id": RUN,
        "requester": "alice",
        "policy": ApprovalPolicy(reviewers=["bob", "carol"], required_approvals={"deploy": 2}),
        "gate_state": "pending",
        "digest": DIGEST,
        "now": NOW,
    }
    fields.update(overrides)
    return ReviewContext(**fields)  # type: ignore[arg-type]


def signed(
    reviewer: str = "bob",
    *,
    key: Ed25519PrivateKey = BOB,
    digest: str | None = DIGEST,
    nonce: str = "nonce-0001",
    expires: datetime = NOW + timedelta(minutes=5),
    run_id: str = RUN,
    **changed: object,
) -> ReviewDecision:
    fields = {
        "gate": "deploy",
        "reviewer": reviewer,
        "approved": True,
        "comment": "ok",
        "digest": digest,
        "nonce": nonce,
        "expires_at": expires.isoformat(),
    }
    message = signing.canonical(run_id=run_id, **fields)  # type: ignore[arg-type]
    fields["signature"] = signing.sign(key, message)
    fields.update(changed)
    return ReviewDecision.model_validate(fields)


def plain(reviewer: str = "bob", **changed: object) -> ReviewDecision:
    return ReviewDecision.model_validate({"gate": "deploy", "reviewer": reviewer, "approved": True, **changed})


def test_the_unsigned_rules() -> None:
    assert refusal(plain(), ctx()) is None
    assert "requested this run" in (refusal(plain("ALICE"), ctx()) or "")
    assert "not a reviewer allowed" in (refusal(plain("mallory"), ctx()) or "")
    assert "already approved" in (refusal(plain("Bob"), ctx(approvals=("bob",))) or "")
    assert "not pending" in (refusal(plain(), ctx(gate_state="approved")) or "")
    assert "unknown gate" in (refusal(plain(gate="launch"), ctx()) or "")
    assert identity(plain(), ctx()) == "unauthenticated"


@pytest.mark.parametrize("name", ["QAgent", "QTest", "qagent", "quantum-bridge", "system", "SYSTEM", "QSecure"])
def test_agent_and_service_identities_never_count(name: str) -> None:
    assert is_service_identity(name)
    reason = refusal(plain(name), ctx(policy=ApprovalPolicy(reviewers=[name])))
    assert reason is not None and "agent or service identity" in reason


@pytest.mark.parametrize("name", ["Quinn", "bob", "erin"])
def test_people_are_not_service_identities(name: str) -> None:
    assert not is_service_identity(name)


def test_a_review_of_other_content_is_refused() -> None:
    reason = refusal(plain(digest="cd" * 32), ctx())
    assert reason is not None and "stale" in reason and "cdcdcdcdcdcd" in reason
    assert refusal(plain(digest=DIGEST), ctx()) is None


def test_the_rules_before_the_patch_are_kept() -> None:
    """Runs recorded before: no agent rule, no digest rule, names as given when not normalised."""
    old = ctx(bound=False, normalised=False)
    assert refusal(plain("QAgent", digest="cd" * 32), ctx(bound=False, policy=ApprovalPolicy())) is None
    assert refusal(plain("ALICE"), old) is not None  # not in the policy
    assert refusal(plain("ALICE"), ctx(bound=False, normalised=False, policy=ApprovalPolicy())) is None


def test_signed_reviews() -> None:
    keyed = ctx(keys=KEYS)
    good = signed()
    assert refusal(good, keyed) is None
    assert identity(good, keyed) == "ed25519:bob"

    def reason(decision: ReviewDecision, context: ReviewContext = keyed) -> str:
        return refusal(decision, context) or ""

    assert "unsigned" in reason(plain(digest=DIGEST))
    assert "does not verify" in reason(signed(comment="changed after signing"))  # tampered
    assert "does not verify" in reason(signed(approved=False))
    assert "does not verify" in reason(signed(key=CAROL))  # signed with another key
    assert "does not verify" in reason(signed(run_id="pipeline-2"))  # another run's review
    assert "expired" in reason(signed(expires=NOW - timedelta(seconds=1)))
    assert "already used" in reason(good, ctx(keys=KEYS, used_nonces=frozenset({"nonce-0001"})))
    assert "no public key" in reason(signed("dave"), ctx(keys=KEYS, policy=ApprovalPolicy()))
    assert "must name the digest" in reason(signed(digest=None))
    assert "stale" in reason(signed(digest="cd" * 32))
    assert identity(signed(key=CAROL), keyed) == ""


def test_the_edges_accept_the_signed_fields() -> None:
    review = ReviewInput(
        gate="deploy", reviewer="bob", approved=True, digest=DIGEST, signature="AAAA", nonce="n" * 16, expires_at="x"
    )
    assert review.decision().digest == DIGEST
    with pytest.raises(ValueError):
        ReviewInput(gate="deploy", reviewer="bob", approved=True, digest="not-hex")


def test_public_keys_load_from_a_directory_or_json(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "bob.pub").write_bytes(BOB.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    (folder / "carol.pub").write_text(base64.b64encode(raw(CAROL)).decode())
    assert load_public_keys(folder) == KEYS
    named = tmp_path / "keys.json"
    named.write_text(f'{{"bob": "{base64.b64encode(raw(BOB)).decode()}"}}')
    assert load_public_keys(named) == {"bob": raw(BOB)}
    (folder / "bad.pub").write_text("nope")
    with pytest.raises(KeyFileError):
        load_public_keys(folder)


def test_quantum_review_signs_with_the_key_file(tmp_path: Path) -> None:
    """The key file `quantum review` reads (PEM or base64 raw), and a review it signs verifies for its run only."""
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    from quantum.cli.review import load_private_key, signed

    pem = tmp_path / "bob.pem"
    pem.write_bytes(BOB.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    b64 = tmp_path / "bob.key"
    b64.write_text(base64.b64encode(BOB.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode())
    for path in (pem, b64):
        decision = signed(plain(digest=DIGEST, comment="ok"), RUN, load_private_key(path), NOW)
        assert decision.nonce and decision.expires_at and decision.signature
        assert refusal(decision, ctx(keys=KEYS)) is None
        assert "does not verify" in (refusal(decision, ctx(keys=KEYS, run_id="pipeline-2")) or "")


GROUPS = {"release": ["Ann", "bob"], "sre": ["carol"]}


def test_a_gate_rule_comes_from_the_gate_then_the_run_then_the_deployment() -> None:
    defaults = {"deploy": GateRule(groups=["release"], required_approvals=2, timeout_seconds=600)}
    rule = gate_policy("deploy", ApprovalPolicy(), defaults=defaults, groups=GROUPS)
    assert (rule.groups, rule.members, rule.required_approvals, rule.timeout_seconds) == (
        ("release",),
        frozenset({"ann", "bob"}),
        2,
        600.0,
    )
    assert not rule.requester_may_review  # never, by default
    # the run's policy names who reviews; the deployment's quorum stays a floor
    run_wide = ApprovalPolicy(groups=["sre"], reviewers=["dave"], required_approvals={"deploy": 1})
    rule = gate_policy("deploy", run_wide, defaults=defaults, groups=GROUPS)
    assert (rule.reviewers, rule.groups, rule.required_approvals) == (("dave",), ("sre",), 2)
    # the gate's own rule wins over the run-wide one
    gated = ApprovalPolicy(reviewers=["dave"], gates={"deploy": GateRule(groups=["release"], timeout_seconds=30)})
    rule = gate_policy("deploy", gated, defaults=defaults, groups=GROUPS)
    assert (rule.reviewers, rule.groups, rule.timeout_seconds) == ((), ("release",), 30.0)
    # other gates keep the request's rules
    assert gate_policy("security", gated, defaults=defaults, groups=GROUPS).reviewers == ("dave",)


def test_group_members_review_and_others_are_told_who_may() -> None:
    rule = gate_policy("deploy", ApprovalPolicy(groups=["release"]), groups=GROUPS)
    assert refusal(plain("ANN"), ctx(rule=rule)) is None
    reason = refusal(plain("carol"), ctx(rule=rule)) or ""
    assert "not a reviewer allowed" in reason and "group release" in reason


def test_the_requester_reviews_only_where_allowed() -> None:
    allowed = ApprovalPolicy(gates={"deploy": GateRule(requester_may_review=True)})
    assert refusal(plain("alice"), ctx(rule=gate_policy("deploy", allowed))) is None
    assert "requested this run" in (refusal(plain("alice"), ctx(rule=gate_policy("security", allowed))) or "")
    # a deployment that says never is not overridden by a request
    never = {"deploy": GateRule(requester_may_review=False)}
    rule = gate_policy("deploy", allowed, defaults=never)
    assert "requested this run" in (refusal(plain("alice"), ctx(rule=rule)) or "")
    # and a deployment default that allows it applies when the request says nothing
    allowing = {"deploy": GateRule(requester_may_review=True)}
    assert gate_policy("deploy", ApprovalPolicy(), defaults=allowing).requester_may_review


def test_a_quorum_no_one_can_reach_is_found_when_the_gate_opens() -> None:
    rule = gate_policy("deploy", ApprovalPolicy(groups=["release"], required_approvals={"deploy": 3}), groups=GROUPS)
    assert "needs 3 approvals but only 2 people" in (rule.unreachable("alice") or "")
    rule = gate_policy("deploy", ApprovalPolicy(groups=["release"], required_approvals={"deploy": 2}), groups=GROUPS)
    assert rule.unreachable("alice") is None
    assert "only 1 person may" in (rule.unreachable("bob") or "")  # the requester does not count
    unknown = gate_policy("deploy", ApprovalPolicy(groups=["nobody"]), groups=GROUPS)
    assert "unknown groups: nobody" in (unknown.unreachable("alice") or "")
    assert gate_policy("deploy", ApprovalPolicy()).unreachable("alice") is None  # anyone may review
    with pytest.raises(ValueError, match="needs 3 approvals but only 2 reviewers"):
        ApprovalPolicy(reviewers=["a", "b"], gates={"deploy": GateRule(required_approvals=3)})


def test_a_policy_with_only_the_old_fields_serialises_as_before() -> None:
    old = {"reviewers": ["bob"], "required_approvals": {"deploy": 1}, "timeout_seconds": {"deploy": 60.0}}
    assert ApprovalPolicy.model_validate(old).model_dump(mode="json") == old
