"""Review floods and replays against real runs on the real dev server: what one caller who can signal a run, or who
captured an approval, can do to it.

- 1,000 ``review`` signals naming a keyed reviewer, the gate's digest and challenge, each with a well-formed
  signature made with another key: the run keeps answering its ``status`` query, a refused signal schedules
  nothing, the signature checks stay within the gate's budget, a real approval still counts by Update, and a
  cancellation compensates.
- A run whose history nears Temporal's limits under a flood stops and compensates while it can.
- An approval captured in one run is refused by a later run under the same workflow id, whose audit chain is its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError

from events import signing
from events.models import PipelineRequest, ReviewDecision
from quantum.audit import Keys, check, read_records
from quantum.audit_keys import audit_verify_keys
from quantum.cli.review import signed
from workflows import review_guard
from workflows.models import PipelineResult, ReviewVerdict, RunStatusView
from workflows.review_guard import MAX_BAD_SIGNATURES
from workflows.reviews import signed_message

from .conftest import HTTP_PROMPT, Harness, gate_review, harness_with, status, wait_for, wait_for_gate

pytestmark = pytest.mark.workflow

BOB, CAROL, MALLORY = (Ed25519PrivateKey.generate() for _ in range(3))
FLOOD = 1000
POLICY = {"reviewers": ["bob", "carol"], "required_approvals": {"deploy": 1}}


def public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture
async def keyed(client: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    keys = tmp_path / "keys"
    keys.mkdir()
    for name, key in (("bob", BOB), ("carol", CAROL)):
        (keys / f"{name}.pub").write_text(base64.b64encode(public(key)).decode())
    async with harness_with(client, nats_url, tmp_path, reviewer_keys=keys) as made:
        yield made


def forged(view: RunStatusView, reviewer: str, run_id: str) -> ReviewDecision:
    """A review naming ``reviewer``, the gate's digest and challenge, well-formed but signed with Mallory's key."""
    decision = gate_review(
        view,
        reviewer,
        nonce=secrets.token_urlsafe(18),
        expires_at=(datetime.now(UTC) + timedelta(minutes=10)).isoformat(),
    )
    return decision.model_copy(update={"signature": signing.sign(MALLORY, signed_message(decision, run_id))})


def bound(view: RunStatusView, reviewer: str, key: Ed25519PrivateKey, run_id: str) -> ReviewDecision:
    return signed(gate_review(view, reviewer), run_id, key, datetime.now(UTC))


async def history_of(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    return list((await handle.fetch_history()).events)


def scheduled(events: list[Any], activity: str) -> int:
    return sum(
        1
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity
    )


async def flood(
    handle: WorkflowHandle[Any, Any], decisions: list[ReviewDecision], *, at_once: int = 100, until_closed: bool = False
) -> None:
    """Signal every decision, ``at_once`` at a time; ``until_closed``: signals the closed run refuses are expected."""
    for start in range(0, len(decisions), at_once):
        sent = decisions[start : start + at_once]
        results = await asyncio.gather(*(handle.signal("review", d) for d in sent), return_exceptions=until_closed)
        if any(isinstance(r, RPCError) for r in results):
            return


@pytest.mark.timeout(600)
async def test_a_thousand_badly_signed_signals_leave_the_run_answering_and_able_to_close(keyed: Harness) -> None:
    async with keyed.worker():
        quorum = {**POLICY, "required_approvals": {"deploy": 2}}  # bob's approval counts, the run still waits
        handle = await keyed.start_pipeline(environment="prod", approval_policy=quorum)
        try:
            view = await wait_for_gate(handle, "deploy")
            before = len(await history_of(handle))
            await flood(handle, [forged(view, "bob", handle.id) for _ in range(FLOOD)])
            view = await wait_for(handle, lambda v: sum(v.refused_reviews.values()) >= FLOOD, timeout=300)
            began = time.perf_counter()
            await status(handle)
            answered_ms = (time.perf_counter() - began) * 1000
            # every signature checked at most once, and no more than the gate's budget of failed checks
            assert view.refused_reviews == {
                "bad_signature": MAX_BAD_SIGNATURES,
                "signature_budget": FLOOD - MAX_BAD_SIGNATURES,
            }, view.refused_reviews
            assert view.gates["deploy"] == "pending" and view.approvals["deploy"] == []
            assert len(view.audit) <= 50 and view.audit_dropped == FLOOD - len(view.audit)

            events = await history_of(handle)
            assert scheduled(events, "audit.append") == 0  # a refused review schedules nothing
            signals = sum(1 for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
            assert signals == FLOOD
            assert len(events) - before <= 4 * FLOOD, (len(events) - before) / FLOOD  # its event and a task at most
            print(f"status answered in {answered_ms:.0f} ms; {(len(events) - before) / FLOOD:.2f} events per signal")

            verdict = await handle.execute_update(
                "review", bound(view, "bob", BOB, handle.id), result_type=ReviewVerdict
            )
            assert verdict.identity == "ed25519:bob" and verdict.approvals == ["bob"]
        finally:
            await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        ended = await status(handle)
        assert ended.status == "cancelled" and ended.compensations, ended
        assert all(c.outcome == "completed" for c in ended.compensations)
        assert scheduled(await history_of(handle), "audit.refusals") == 1  # one summary of the gate's refusals


@pytest.mark.timeout(600)
async def test_a_flood_near_the_history_limit_stops_the_run_while_it_can_compensate(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard is Temporal's limit less a margin; here it is lowered so that 300 signals reach it."""
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod")
        view = await wait_for_gate(handle, "deploy")
        length = len(await history_of(handle))
        monkeypatch.setattr(review_guard, "HISTORY_GUARD_EVENTS", length + 200)
        noise = [ReviewDecision(gate="deploy", reviewer=f"stranger-{n}", approved=True) for n in range(300)]
        await flood(handle, [d.model_copy(update={"digest": "0" * 64}) for d in noise], until_closed=True)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        ended = await status(handle)
    assert ended.status == "failed" and "near Temporal's limits" in (ended.error or ""), ended.error
    assert ended.stages["deploy_application"] == "failed"
    assert ended.compensations and all(c.outcome == "completed" for c in ended.compensations)
    assert view.gate_challenges["deploy"]


@pytest.mark.timeout(600)
async def test_an_approval_captured_in_one_run_never_counts_in_a_later_run_under_the_same_id(
    keyed: Harness, nats_url: str
) -> None:
    workflow_id = f"pipeline-reused-{uuid.uuid4()}"
    request = PipelineRequest.model_validate(
        {
            "project": keyed.project,
            "prompt": HTTP_PROMPT,
            "requested_by": "dana",
            "environment": "prod",
            "approval_policy": POLICY,
        }
    )

    async def start() -> WorkflowHandle[Any, Any]:
        return await keyed.client.start_workflow(
            "DevSecOpsPipelineWorkflow",
            request,
            id=workflow_id,
            task_queue=keyed.task_queue,
            result_type=PipelineResult,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )

    async with keyed.worker():
        first = await start()
        view = await wait_for_gate(first, "deploy")
        captured = bound(view, "bob", BOB, workflow_id)
        await first.execute_update("review", captured, result_type=ReviewVerdict)
        assert (await first.result()).status == "succeeded"

        second = await start()
        try:
            again = await wait_for_gate(second, "deploy")
            assert again.gate_challenges["deploy"] != view.gate_challenges["deploy"]
            for replayed in (captured, captured.model_copy(update={"challenge": again.gate_challenges["deploy"]})):
                with pytest.raises(WorkflowUpdateFailedError) as refused:
                    await second.execute_update("review", replayed, result_type=ReviewVerdict)
                reason = str(refused.value.cause)
                assert any(why in reason for why in ("stale", "does not verify", "a replayed review")), reason
            await second.signal("review", captured)
            now = await wait_for(second, lambda v: sum(v.refused_reviews.values()) == 1)
            assert now.refused_reviews == {"stale": 1} and now.gates["deploy"] == "pending"
            # bob signs anew for this run but reuses the nonce the first run spent: refused as a replay
            reused = gate_review(again, "bob", nonce=captured.nonce, expires_at=captured.expires_at)
            reused = reused.model_copy(update={"signature": signing.sign(BOB, signed_message(reused, workflow_id))})
            with pytest.raises(WorkflowUpdateFailedError) as replay:
                await second.execute_update("review", reused, result_type=ReviewVerdict)
            assert "a replayed review" in str(replay.value.cause)
            # an expiry far past the gate's clock is refused too
            distant = ReviewDecision.model_validate(
                {**bound(again, "carol", CAROL, workflow_id).model_dump(), "expires_at": "9999-12-31T00:00:00+00:00"}
            )
            distant = distant.model_copy(
                update={"signature": signing.sign(CAROL, signed_message(distant, workflow_id))}
            )
            with pytest.raises(WorkflowUpdateFailedError) as far:
                await second.execute_update("review", distant, result_type=ReviewVerdict)
            assert "too far ahead" in str(far.value.cause)
            fresh = await second.execute_update(
                "review", bound(again, "carol", CAROL, workflow_id), result_type=ReviewVerdict
            )
            assert fresh.gate_state == "approved"
            assert (await second.result()).status == "succeeded"
        finally:
            with contextlib.suppress(RPCError):
                await second.cancel()

    nc = await nats.connect(nats_url)
    try:
        verdict = check(await read_records(nc, run_id=workflow_id), Keys(audit=audit_verify_keys(keyed.settings)))
    finally:
        await nc.close()
    assert verdict.intact, verdict.problems  # two chains, one per execution: no fork
    executions = {first.result_run_id, second.result_run_id}
    assert {(c.execution, c.records) for c in verdict.runs} == {(e, 1) for e in executions}


@pytest.mark.timeout(600)
async def test_a_few_huge_signals_near_the_history_size_limit_stop_the_run_while_it_can_compensate(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Size, not count: signals of 400 kB each (a comment far over its bound, refused) fill the history by bytes."""
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod")
        await wait_for_gate(handle, "deploy")
        history = await handle.fetch_history()
        size = sum(e.ByteSize() for e in history.events)
        monkeypatch.setattr(review_guard, "HISTORY_GUARD_BYTES", size + 1_000_000)
        huge = ReviewDecision(gate="deploy", reviewer="stranger", approved=True, comment="x" * 400_000)
        await flood(handle, [huge] * 6, at_once=1, until_closed=True)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        ended = await status(handle)
    assert ended.status == "failed" and "near Temporal's limits" in (ended.error or ""), ended.error
    assert ended.compensations and all(c.outcome == "completed" for c in ended.compensations)
    assert all(len(e.comment) <= 500 for e in ended.audit)  # what the view keeps of each stays bounded


@pytest.mark.timeout(600)
async def test_concurrent_badly_signed_updates_leave_no_trace_and_the_run_answering(keyed: Harness) -> None:
    async with keyed.worker():
        handle = await keyed.start_pipeline(environment="prod", approval_policy=POLICY)
        try:
            view = await wait_for_gate(handle, "deploy")
            before = len(await history_of(handle))
            results = await asyncio.gather(
                *(
                    handle.execute_update("review", forged(view, "bob", handle.id), result_type=ReviewVerdict)
                    for _ in range(200)
                ),
                return_exceptions=True,
            )
            refusals = [r for r in results if isinstance(r, WorkflowUpdateFailedError)]
            busy = [r for r in results if isinstance(r, RPCError)]  # Temporal may turn some away as too many
            assert len(refusals) + len(busy) == 200 and refusals, results[:3]
            assert all("does not verify" in str(r.cause) for r in refusals)
            view = await status(handle)
            assert view.gates["deploy"] == "pending" and view.audit == [] and view.refused_reviews == {}
            events = await history_of(handle)
            kinds = {e.event_type for e in events[before:]}
            assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in kinds
            assert scheduled(events, "audit.append") == 0
        finally:
            await handle.terminate("test over")
