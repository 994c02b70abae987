"""The rule book of runs with gate challenges (``judge``), as a pure function: what each review costs and why it is
refused (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from events import signing
from events.models import ApprovalPolicy, ReviewDecision
from workflows.review_rules import ReviewContext, gate_challenge, judge, refusal_kind, signed_message

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DIGEST = "ab" * 32
RUN = "pipeline-1"
CHALLENGE = gate_challenge(RUN, "execution-1", "deploy", 1, DIGEST)
BOB, MALLORY = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
KEYS = {"bob": BOB.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)}


class CountingVerifier:
    """``events.signing.verify``, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, key: bytes, message: bytes, signature: str) -> bool:
        self.calls += 1
        return signing.verify(key, message, signature, native=True)


def ctx(**overrides: object) -> ReviewContext:
    fields: dict[str, object] = {
        "run_id": RUN,
        "requester": "alice",
        "policy": ApprovalPolicy(reviewers=["bob", "carol"]),
        "gate_state": "pending",
        "digest": DIGEST,
        "keys": KEYS,
        "now": NOW,
        "challenge": CHALLENGE,
        "max_validity_seconds": 3600.0,
    }
    fields.update(overrides)
    return ReviewContext(**fields)  # type: ignore[arg-type]


def review(key: Ed25519PrivateKey = BOB, **changed: object) -> ReviewDecision:
    fields: dict[str, object] = {
        "gate": "deploy",
        "reviewer": "bob",
        "approved": True,
        "digest": DIGEST,
        "challenge": CHALLENGE,
        "nonce": "nonce-0001",
        "expires_at": (NOW + timedelta(minutes=10)).isoformat(),
    }
    fields.update(changed)
    decision = ReviewDecision.model_validate(fields)
    return decision.model_copy(update={"signature": signing.sign(key, signed_message(decision, RUN))})


def test_a_good_review_costs_one_signature_check() -> None:
    verifier = CountingVerifier()
    judgement = judge(review(), ctx(verify=verifier))
    assert (judgement.reason, judgement.identity, judgement.verified) == (None, "ed25519:bob", True)
    assert verifier.calls == 1


@pytest.mark.parametrize(
    ("changed", "context", "kind"),
    [
        ({"gate": "nowhere"}, {}, "unknown_gate"),
        ({}, {"gate_state": "approved"}, "not_pending"),
        ({"reviewer": "QAgent"}, {}, "service_identity"),
        ({"reviewer": "alice"}, {}, "requester"),
        ({"reviewer": "mallory"}, {}, "not_allowed"),
        ({}, {"approvals": ("BOB",)}, "duplicate"),
        ({"digest": "cd" * 32}, {}, "stale"),
        ({"challenge": "0" * 48}, {}, "stale"),  # another run's or an earlier opening's
        ({"expires_at": (NOW - timedelta(seconds=1)).isoformat()}, {}, "expired"),
        ({"expires_at": "9999-12-31T00:00:00+00:00"}, {}, "too_long_valid"),
        ({"nonce": "spent-nonce"}, {"used_nonces": frozenset({"spent-nonce"})}, "replayed"),
    ],
)
def test_a_review_refused_by_a_check_that_costs_nothing_costs_no_signature_check(
    changed: dict[str, object], context: dict[str, object], kind: str
) -> None:
    verifier = CountingVerifier()
    judgement = judge(review(MALLORY, **changed), ctx(verify=verifier, **context))
    assert judgement.reason is not None and refusal_kind(judgement.reason) == kind, judgement.reason
    assert verifier.calls == 0 and not judgement.verified


def test_a_bad_signature_is_checked_once_and_then_not_at_all_past_the_budget() -> None:
    verifier = CountingVerifier()
    bad = judge(review(MALLORY), ctx(verify=verifier))
    assert bad.reason and refusal_kind(bad.reason) == "bad_signature" and bad.verified and verifier.calls == 1
    spent = judge(review(MALLORY), ctx(verify=verifier, may_verify=False))
    assert spent.reason and refusal_kind(spent.reason) == "signature_budget" and verifier.calls == 1


def test_an_approval_of_one_gate_does_not_count_at_another_gate_or_opening() -> None:
    infra = gate_challenge(RUN, "execution-1", "infra", 1, DIGEST)
    again = gate_challenge(RUN, "execution-1", "deploy", 2, DIGEST)
    later = gate_challenge(RUN, "execution-2", "deploy", 1, DIGEST)
    assert len({CHALLENGE, infra, again, later}) == 4
    for challenge in (infra, again, later):
        reason = judge(review(), ctx(challenge=challenge)).reason
        assert reason and "a review of another run or of an earlier opening" in reason


def test_without_keys_a_review_is_taken_by_name() -> None:
    judgement = judge(ReviewDecision(gate="deploy", reviewer="bob", approved=True), ctx(keys=None))
    assert (judgement.reason, judgement.identity) == (None, "unauthenticated")


def test_the_bridge_refuses_what_no_run_could_accept() -> None:
    """The edge's check (``signed_review_problem``) refuses the same signatures, with no run state."""
    assert signing.signed_review_problem(review(), run_id=RUN, keys=KEYS, now=NOW, max_validity_seconds=3600) is None
    cases = {
        "does not verify": review(MALLORY),
        "missing challenge": review().model_copy(update={"challenge": None}),
        "no public key": review(reviewer="carol"),
        "expired": review(expires_at=(NOW - timedelta(seconds=1)).isoformat()),
        "too far ahead": review(expires_at="9999-12-31T00:00:00+00:00"),
    }
    for reason, decision in cases.items():
        problem = signing.signed_review_problem(decision, run_id=RUN, keys=KEYS, now=NOW, max_validity_seconds=3600)
        assert problem is not None and reason in problem, (reason, problem)
