"""Review gates on the real dev server: the ``review`` Update and signal, quorums, digests and signed reviews."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from events.models import ReviewDecision
from quantum.cli.review import signed
from quantum.settings import Settings
from quantum.worker import build_agents
from workflows import WORKFLOWS
from workflows.models import ReviewVerdict

from .conftest import Harness, wait_for, wait_for_gate

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
    replayer = Replayer(workflows=list(WORKFLOWS), data_converter=pydantic_data_converter)
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


@pytest.fixture
async def keyed(client: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """A harness whose worker knows the public keys of bob and carol (not mallory's)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "bob.pub").write_bytes(public(BOB))
    (keys / "carol.pub").write_text(base64.b64encode(public(CAROL)).decode())
    settings = Settings(data_dir=tmp_path / "data", nats_url=nats_url, reviewer_keys=keys, _env_file=None)  # type: ignore[call-arg]
    agents = build_agents(settings)
    try:
        yield Harness(client, settings, agents)
    finally:
        await agents.close()


async def test_signed_reviews_on_the_update_and_the_signal(keyed: Harness) -> None:
    harness = keyed
    policy = {"reviewers": ["bob", "carol", "dave"], "required_approvals": {"deploy": 2}}
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod", approval_policy=policy)
        try:
            view = await wait_for_gate(handle, "deploy")
            digest = view.gate_digests["deploy"]
            now = datetime.now(UTC)

            def sign(reviewer: str, key: Ed25519PrivateKey, **fields: Any) -> ReviewDecision:
                return signed(review(reviewer, digest=digest), handle.id, key, now).model_copy(update=fields)

            expired = signed(review("bob", digest=digest), handle.id, BOB, now - timedelta(hours=1))
            cases = {
                "unsigned": review("bob", digest=digest),
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
            assert "a replayed review" in await refused(handle, good)
            assert "a replayed review" in await signal_refusal(handle, good)

            await handle.signal("review", sign("carol", CAROL))
            view = await wait_for(handle, lambda v: v.gates["deploy"] == "approved")
            accepted = [(e.reviewer, e.identity, e.digest) for e in view.audit if e.accepted]
            assert accepted == [("bob", "ed25519:bob", digest), ("carol", "ed25519:carol", digest)]
            assert await accepted_updates(handle) == 1
        finally:
            await handle.terminate("test over")
        await replays(handle)
