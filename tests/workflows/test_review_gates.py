"""Review gates on the real dev server: the ``review`` Update and signal, quorums, digests and signed reviews."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from events import signing
from events.models import ApprovalPolicy, ReviewDecision
from quantum.cli.review import signed
from quantum.worker import new_replayer, new_worker
from workflows.models import ReviewVerdict, RunStatusView
from workflows.reviews import signed_message
from workflows.saga import Run

from .conftest import Harness, gate_review, harness_with, wait_for, wait_for_gate
from .conftest import status as status_of

pytestmark = pytest.mark.workflow

BOB, CAROL, MALLORY = (Ed25519PrivateKey.generate() for _ in range(3))


def review(reviewer: str, **fields: Any) -> ReviewDecision:
    return ReviewDecision.model_validate({"gate": "deploy", "reviewer": reviewer, "approved": True, **fields})


async def update(handle: WorkflowHandle[Any, Any], decision: ReviewDecision) -> ReviewVerdict:
    verdict: ReviewVerdict = await handle.execute_update("review", decision, result_type=ReviewVerdict)
    return verdict


async def refused(handle: WorkflowHandle[Any, Any], decision: ReviewDecision) -> str:
    """The reason the Update was refused with, as the caller sees it."""
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, decision)
    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ReviewRefused", cause
    return cause.message


async def accepted_updates(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    types = [event.event_type for event in history.events]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_REJECTED not in types
    return types.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)


async def replays(handle: WorkflowHandle[Any, Any]) -> None:
    """The run's history replays against today's code with a worker that has no keys: the keys and the verdicts
    come from the history."""
    replayer = new_replayer()
    result = await replayer.replay_workflow(await handle.fetch_history(), raise_on_replay_failure=True)
    assert result.replay_failure is None


async def signal_refusal(handle: WorkflowHandle[Any, Any], decision: ReviewDecision) -> str:
    """Send ``decision`` as the signal and return the reason the run recorded for refusing it."""
    before = len((await handle.query("status")).get("audit", []))
    await handle.signal("review", decision)
    view = await wait_for(handle, lambda v: len(v.audit) > before)
    entry = view.audit[-1]
    assert not entry.accepted, entry
    return entry.reason


async def test_quorum_digest_and_refusals_through_the_update(harness: Harness) -> None:
    policy = {"reviewers": ["bob", "carol", "QAgent"], "required_approvals": {"deploy": 2}}
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod", approval_policy=policy)
        try:
            view = await wait_for_gate(handle, "deploy")
            digest = view.gate_digests["deploy"]
            assert digest == view.outputs["release"] and len(digest) == 64

            assert "requested this run" in await refused(handle, review("Alice"))
            assert "agent or service identity" in await refused(handle, review("QAgent"))
            stale = await refused(handle, review("bob", digest="0" * 64))
            assert "stale" in stale and "000000000000" in stale
            assert "not a reviewer allowed" in await refused(handle, review("mallory"))
            view = await wait_for(handle, lambda v: True)
            assert view.audit == [] and await accepted_updates(handle) == 0  # refused Updates leave no trace

            # the same reviewer three times at once: counted once
            results = await asyncio.gather(
                *(update(handle, review("bob", digest=digest)) for _ in range(3)), return_exceptions=True
            )
            verdicts = [r for r in results if isinstance(r, ReviewVerdict)]
            assert len(verdicts) == 1, results
            assert verdicts[0].approvals == ["bob"] and verdicts[0].gate_state == "pending"
            assert verdicts[0].identity == "unauthenticated" and verdicts[0].required_approvals == 2
            assert "already approved" in await signal_refusal(handle, review("BOB"))
            view = await wait_for(handle, lambda v: True)
            assert view.gates["deploy"] == "pending" and view.approvals["deploy"] == ["bob"]

            verdict = await update(handle, review("carol"))
            assert verdict.gate_state == "approved" and verdict.approvals == ["bob", "carol"]
            view = await wait_for(handle, lambda v: v.gates["deploy"] == "approved")
            assert [(e.reviewer, e.identity) for e in view.audit if e.accepted] == [
                ("bob", "unauthenticated"),
                ("carol", "unauthenticated"),
            ]
            assert 2 <= await accepted_updates(handle) <= 3  # the duplicate may have been refused by the handler
        finally:
            await handle.terminate("test over")
        await replays(handle)


def public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_folder(tmp_path: Path) -> Path:
    """The public keys of bob and carol (not mallory's), as a deployment mounts them."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "bob.pub").write_bytes(public(BOB))
    (keys / "carol.pub").write_text(base64.b64encode(public(CAROL)).decode())
    return keys


@pytest.fixture
async def keyed(client: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """A harness whose worker knows the public keys of bob and carol (not mallory's)."""
    async with harness_with(client, nats_url, tmp_path, reviewer_keys=key_folder(tmp_path)) as made:
        yield made


async def test_signed_reviews_on_the_update_and_the_signal(keyed: Harness) -> None:
    harness = keyed
    policy = {"reviewers": ["bob", "carol", "dave"], "required_approvals": {"deploy": 2}}
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod", approval_policy=policy)
        try:
            view = await wait_for_gate(handle, "deploy")
            digest, challenge = view.gate_digests["deploy"], view.gate_challenges["deploy"]
            assert len(challenge) == 48
            now = datetime.now(UTC)

            def sign(reviewer: str, key: Ed25519PrivateKey, **fields: Any) -> ReviewDecision:
                bound = review(reviewer, digest=digest, challenge=challenge)
                return signed(bound, handle.id, key, now).model_copy(update=fields)

            expired = signed(
                review("bob", digest=digest, challenge=challenge), handle.id, BOB, now - timedelta(hours=1)
            )
            cases = {
                "unsigned": review("bob", digest=digest, challenge=challenge),
                "(missing challenge)": signed(review("bob", digest=digest), handle.id, BOB, now),
                "does not verify": sign("bob", BOB, comment="changed after signing"),
                "expired": expired,
                "does not verify with the key of 'bob'": sign("bob", MALLORY),  # the wrong key
                "no public key is configured for 'dave'": sign("dave", MALLORY),
            }
            for reason, decision in cases.items():
                assert reason in await refused(handle, decision), reason
                assert reason in await signal_refusal(handle, decision), reason
            assert await accepted_updates(handle) == 0

            good = sign("bob", BOB)
            verdict = await update(handle, good)
            assert verdict.identity == "ed25519:bob" and verdict.approvals == ["bob"]
            assert "already approved" in await refused(handle, good)
            assert "already approved" in await signal_refusal(handle, good)
            reuse = review("carol", digest=digest, challenge=challenge, nonce=good.nonce, expires_at=good.expires_at)
            reuse = reuse.model_copy(update={"signature": signing.sign(CAROL, signed_message(reuse, handle.id))})
            assert "a replayed review" in await refused(handle, reuse)  # carol's signature, bob's spent nonce

            await handle.signal("review", sign("carol", CAROL))
            view = await wait_for(handle, lambda v: v.gates["deploy"] == "approved")
            accepted = [(e.reviewer, e.identity, e.digest) for e in view.audit if e.accepted]
            assert accepted == [("bob", "ed25519:bob", digest), ("carol", "ed25519:carol", digest)]
            assert await accepted_updates(handle) == 1
        finally:
            await handle.terminate("test over")
        await replays(handle)


async def test_the_deployments_groups_and_defaults_rule_the_gates(
    client: Client, nats_url: str, tmp_path: Path
) -> None:
    """Groups and gate defaults come from the worker's settings (recorded in the run's history): the deployment's
    quorum is a floor under the request's, the requester reviews only where the policy allows it, and a gate no one
    can approve fails the run when it opens instead of waiting for its timeout."""
    settings = {
        "reviewer_groups": {"release": ["ann", "bob"]},
        "review_defaults": {"deploy": {"groups": ["release"], "required_approvals": 2, "timeout_seconds": 3600}},
    }
    async with harness_with(client, nats_url, tmp_path, **settings) as harness, harness.worker():
        mine = {"required_approvals": {"deploy": 1}, "gates": {"deploy": {"requester_may_review": True}}}
        handle = await harness.start_pipeline(environment="prod", requested_by="ann", approval_policy=mine)
        nobody = await harness.start_pipeline(environment="prod", approval_policy={"groups": ["nobody"]})
        try:
            view = await wait_for_gate(handle, "deploy")
            digest = view.gate_digests["deploy"]
            reason = await refused(handle, review("carol", digest=digest))
            assert "not a reviewer allowed" in reason and "group release" in reason
            verdict = await update(handle, review("Ann", digest=digest))  # the requester, allowed for this gate
            assert (verdict.gate_state, verdict.required_approvals) == ("pending", 2)  # the floor holds
            verdict = await update(handle, review("bob", digest=digest))
            assert verdict.gate_state == "approved"
            assert (await handle.result()).status == "succeeded"

            with pytest.raises(WorkflowFailureError):
                await nobody.result()
            ended = await wait_for(nobody, lambda v: v.status == "failed")
            assert "needs 2 approvals but only 0 people may review it (unknown groups: nobody)" in (ended.error or "")
            assert ended.stages["deploy_application"] == "failed" and ended.compensations
        finally:
            for run in (handle, nobody):
                with contextlib.suppress(Exception):
                    await run.terminate("test over")
        await replays(handle)


@workflow.defn(name="RegatedProbe", sandboxed=False)
class RegatedProbe:
    """Opens the deploy gate once per digest, as a run would after regenerating what the gate asked about."""

    @workflow.init
    def __init__(self, digests: list[str]) -> None:
        view = RunStatusView(pipeline_id=workflow.info().workflow_id, workflow="RegatedProbe")
        self._run = Run(view, policy=ApprovalPolicy(), requester="alice", project="regated")

    @workflow.run
    async def run(self, digests: list[str]) -> None:
        async def body() -> None:
            for digest in digests:
                await self._run.gate("deploy", "deploy_application", reason="regenerated", digest=digest)

        await self._run.execute(body)

    @workflow.signal(name="review")
    def review(self, decision: ReviewDecision) -> None:
        self._run.review(decision)

    @workflow.update(name="review")
    def review_update(self, decision: ReviewDecision) -> ReviewVerdict:
        return self._run.review_update(decision)

    @review_update.validator
    def validate_review(self, decision: ReviewDecision) -> None:
        self._run.validate_review(decision)

    @workflow.query(name="status")
    def status(self) -> RunStatusView:
        return self._run.view


async def test_content_regenerated_after_a_review_revokes_it(harness: Harness) -> None:
    """A gate that opens again on new content starts with no approvals: the reviews of the content before it no
    longer count, and a review naming the old digest is refused as stale."""
    first, second = "1" * 64, "2" * 64
    activities = harness.agents.activities()
    async with new_worker(harness.client, activities, task_queue=harness.task_queue, workflows=[RegatedProbe]):
        handle = await harness.client.start_workflow(
            RegatedProbe.run, [first, second], id=f"regated-{uuid.uuid4()}", task_queue=harness.task_queue
        )
        await wait_for(handle, lambda v: v.gate_digests.get("deploy") == first and v.pending_gate == "deploy")
        assert (await update(handle, review("bob", digest=first))).gate_state == "approved"
        view = await wait_for(handle, lambda v: v.gate_digests.get("deploy") == second and v.pending_gate == "deploy")
        assert view.approvals["deploy"] == []  # bob's approval was of the first content
        assert any("approvals of 111111111111… cleared" in w for w in view.warnings), view.warnings
        assert "stale" in await refused(handle, review("carol", digest=first))
        assert (await update(handle, review("bob", digest=second))).gate_state == "approved"
        await handle.result()
        accepted = [(e.reviewer, e.digest) for e in (await status_of(handle)).audit if e.accepted]
    assert accepted == [("bob", first), ("bob", second)]


async def test_a_signed_review_counts_only_at_the_gate_opening_it_signed(keyed: Harness) -> None:
    """Each opening of a gate issues its own challenge: Bob's signed approval of the next content, sent early with
    this opening's challenge, is refused (stale), and so is it, and Carol's counted approval of the first content,
    when the gate opens again on the next content."""
    first, second = "1" * 64, "2" * 64
    async with new_worker(
        keyed.client, keyed.agents.activities(), task_queue=keyed.task_queue, workflows=[RegatedProbe]
    ):
        handle = await keyed.client.start_workflow(
            RegatedProbe.run, [first, second], id=f"regated-{uuid.uuid4()}", task_queue=keyed.task_queue
        )
        view = await wait_for(handle, lambda v: v.pending_gate == "deploy" and v.gate_digests.get("deploy") == first)
        opened = view.gate_challenges["deploy"]
        early = signed(review("bob", digest=second, challenge=opened), handle.id, BOB, datetime.now(UTC))
        assert "stale" in await signal_refusal(handle, early)
        carol = signed(review("carol", digest=first, challenge=opened), handle.id, CAROL, datetime.now(UTC))
        await update(handle, carol)
        view = await wait_for(handle, lambda v: v.pending_gate == "deploy" and v.gate_digests.get("deploy") == second)
        assert view.gate_challenges["deploy"] != opened
        for decision in (early, carol.model_copy(update={"digest": second})):
            assert "an earlier opening" in await refused(handle, decision)
        assert "an earlier opening" in await signal_refusal(handle, early)
        await handle.terminate("test over")


async def test_a_two_person_rule_stops_one_key_holder_requesting_under_another_name(
    client: Client, nats_url: str, tmp_path: Path
) -> None:
    """Nothing binds ``requested_by`` to an identity: bob, who holds his key, requests a run as ``dana`` (asking for
    one approval) and approves it himself. The deployment's quorum floor of two is what stops him shipping alone."""
    floor = {"deploy": {"required_approvals": 2}}
    keys = key_folder(tmp_path)
    async with (
        harness_with(client, nats_url, tmp_path, reviewer_keys=keys, review_defaults=floor) as harness,
        harness.worker(),
    ):
        handle = await harness.start_pipeline(
            environment="prod", requested_by="dana", approval_policy={"required_approvals": {"deploy": 1}}
        )
        try:
            view = await wait_for_gate(handle, "deploy")
            bound = gate_review(view, "bob")
            verdict = await update(handle, signed(bound, handle.id, BOB, datetime.now(UTC)))
            assert verdict.identity == "ed25519:bob"  # the key holder's own approval counts...
            assert (verdict.gate_state, verdict.required_approvals) == ("pending", 2)  # ...but not alone
            assert "already approved" in await refused(handle, signed(bound, handle.id, BOB, datetime.now(UTC)))
            view = await status_of(handle)
            assert view.gates["deploy"] == "pending" and view.approvals["deploy"] == ["bob"]
        finally:
            await handle.terminate("test over")
