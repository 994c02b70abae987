"""Events end to end: review and cancel events reach runs, and runs announce themselves in order, once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client, WorkflowFailureError

from events.catalog import OUTBOUND
from events.dead_letters import REASON_HEADER
from events.envelope import new_event
from events.publisher import EventPublisher, PublishEventInput
from events.streams import EVENTS_STREAM

from ..workflows.conftest import gate_review, harness_with, status, wait_for_gate
from .conftest import (
    Harness,
    RecordingBridge,
    bridge_config,
    bridge_running,
    dead_letters,
    publish,
    settled,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


async def announced(nc: NATS, pipeline_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of every outbound event of ``pipeline_id`` in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(EVENTS_STREAM, seq)
        event = json.loads(msg.data)
        if event["type"] in OUTBOUND and event["data"]["pipeline_id"] == pipeline_id:
            assert msg.headers["Nats-Msg-Id"] == event["id"]
            found.append((event["type"], event["data"]))
    return found


async def test_a_run_announces_its_events_in_order(harness: Harness, nc: NATS) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline()
        await handle.result()
    events = await announced(nc, handle.id)
    assert [t for t, _ in events] == [
        "quantum.pipeline.started",
        *["quantum.stage.completed"] * 7,
        "quantum.pipeline.completed",
    ]
    assert [d["stage"] for t, d in events if t == "quantum.stage.completed"] == [
        "generate_code",
        "generate_tests",
        "execute_tests",
        "security_scan",
        "deploy_application",
        "verify_deployment",
        "setup_monitoring",
    ]
    assert events[0][1]["project"] == harness.project
    assert events[-1][1]["outputs"]["provider"] == "offline-patterns"


async def test_a_failed_run_announces_the_failure_and_each_compensation(harness: Harness, nc: NATS) -> None:
    from ..workflows.conftest import failing

    async with harness.worker(failing("deploy.verify")):
        handle = await harness.start_pipeline()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    events = await announced(nc, handle.id)
    assert [t for t, _ in events][-5:] == [
        "quantum.stage.failed",
        "quantum.compensation.completed",
        "quantum.compensation.completed",
        "quantum.compensation.completed",
        "quantum.pipeline.failed",
    ]
    assert events[-5][1]["stage"] == "verify_deployment"
    steps = [d["step"] for t, d in events if t == "quantum.compensation.completed"]
    assert steps == ["rollback_deployment", "cleanup_tests", "cleanup_code"]
    assert events[-1][1]["status"] == "failed"
    assert [c["step"] for c in events[-1][1]["compensations"]] == steps


async def test_a_retried_publish_is_published_once(nats_url: str, nc: NATS) -> None:
    publisher = EventPublisher(nats_url)
    inp = PublishEventInput(
        type="quantum.stage.completed",
        data={"pipeline_id": "pipeline-x", "stage": "generate_code"},
        workflow_id="pipeline-x",
        step="stage.generate_code.completed",
    )
    first = await publisher.publish(inp)
    again = await publisher.publish(inp)
    await publisher.close()
    assert not first.duplicate and again.duplicate
    assert first.id == again.id == "pipeline-x.stage.generate_code.completed"
    assert (await nc.jetstream().stream_info(EVENTS_STREAM)).state.messages == 1


async def test_review_and_cancel_events_reach_their_runs(harness: Harness, nc: NATS) -> None:
    bridge = RecordingBridge(nc, harness.client, bridge_config(harness.task_queue))
    async with harness.worker(), bridge_running(bridge):
        request = new_event(
            "quantum.pipeline.requested",
            {
                "project": harness.project,
                "prompt": "an HTTP JSON service",
                "requested_by": "alice",
                "environment": "prod",
            },
            source="tests",
        )
        await publish(nc, request)
        handle = harness.client.get_workflow_handle(f"pipeline-{request.id}")
        await wait_for_gate(handle, "deploy")
        review = {"pipeline_id": handle.id, "gate": "deploy", "reviewer": "bob", "approved": True, "comment": "ok"}
        await publish(nc, new_event("quantum.review.submitted", review, source="tests"))
        result = await handle.result()
        assert result["status"] == "succeeded"

        doomed = new_event(
            "quantum.pipeline.requested",
            {
                "project": f"{harness.project}-b",
                "prompt": "an HTTP JSON service",
                "requested_by": "alice",
                "environment": "prod",
            },
            source="tests",
        )
        await publish(nc, doomed)
        doomed_handle = harness.client.get_workflow_handle(f"pipeline-{doomed.id}")
        await wait_for_gate(doomed_handle, "deploy")
        cancel = {"pipeline_id": doomed_handle.id, "requested_by": "alice", "reason": "changed my mind"}
        await publish(nc, new_event("quantum.pipeline.cancel_requested", cancel, source="tests"))
        with pytest.raises(WorkflowFailureError):
            await doomed_handle.result()
        await wait_until(lambda: settled(nc), what="all inbound events settled")
        view = await doomed_handle.query("status")
    assert view["status"] == "cancelled"
    assert [c["step"] for c in view["compensations"]] == ["cleanup_tests", "cleanup_code"]


async def test_a_gate_reminds_at_half_its_timeout_escalates_at_80_percent_and_expires(
    harness: Harness, nc: NATS
) -> None:
    policy = {"timeout_seconds": {"deploy": 5}, "escalation_contacts": ["oncall"]}
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod", approval_policy=policy)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    events = await announced(nc, handle.id)
    types = [t for t, _ in events]
    at = types.index("quantum.review.requested")
    assert types[at + 1 : at + 3] == ["quantum.review.reminder", "quantum.review.escalated"]
    reminder, escalated = events[at + 1][1], events[at + 2][1]
    assert (reminder["gate"], reminder["waited_seconds"], reminder["timeout_seconds"]) == ("deploy", 2.5, 5.0)
    assert (escalated["waited_seconds"], escalated["contacts"]) == (4.0, ["oncall"])
    assert types[-1] == "quantum.pipeline.failed" and events[-1][1]["status"] == "timed_out"
    assert "quantum.compensation.completed" in types[at + 3 :]  # expiry fails closed: the run compensates


async def test_a_review_event_the_run_refuses_is_dead_lettered_with_the_reason(harness: Harness, nc: NATS) -> None:
    """The event path applies the run's rules through the Update: a refused review never reaches the run's history
    and lands in the dead letters with the run's reason; an accepted one counts."""
    bridge = RecordingBridge(nc, harness.client, bridge_config(harness.task_queue))
    async with harness.worker(), bridge_running(bridge):
        handle = await harness.start_pipeline(environment="prod")
        await wait_for_gate(handle, "deploy")
        own = new_event(
            "quantum.review.submitted",
            {"pipeline_id": handle.id, "gate": "deploy", "reviewer": "alice", "approved": True},
            source="tests",
        )
        await publish(nc, own, msg_id=own.id)

        async def handled() -> bool:
            return any(i == own.id for i, _ in bridge.outcomes)

        await wait_until(handled, what="the refused review handled")
        letters = [m for m in await dead_letters(nc) if own.id.encode() in (m.data or b"")]
        assert len(letters) == 1 and letters[0].headers is not None
        assert "ReviewRefused" in letters[0].headers[REASON_HEADER]
        assert "requested this run" in letters[0].headers[REASON_HEADER]
        ok = {"pipeline_id": handle.id, "gate": "deploy", "reviewer": "bob", "approved": True}
        await publish(nc, new_event("quantum.review.submitted", ok, source="tests"))
        result = await handle.result()
        history = (await handle.fetch_history()).to_json()
        view = await status(handle)
    assert result.status == "succeeded"
    assert [e.reviewer for e in view.audit] == ["bob"]  # the refused one never reached the run
    assert '"reviewer":"alice"' not in history.replace(" ", "")


async def test_signed_review_events_are_checked_like_any_review(
    client: Client, nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """With reviewers' keys configured, the event path refuses an unsigned review, a tampered one and one signed
    with another key, each dead-lettered with the run's reason; the same review signed by its reviewer counts."""
    from datetime import UTC, datetime

    from events.models import ReviewDecision
    from quantum.cli.review import signed

    from ..workflows.test_review_gates import BOB, MALLORY, key_folder

    async with harness_with(client, nats_url, tmp_path, reviewer_keys=key_folder(tmp_path)) as harness:
        bridge = RecordingBridge(nc, harness.client, bridge_config(harness.task_queue))
        async with harness.worker(), bridge_running(bridge):
            handle = await harness.start_pipeline(environment="prod")
            view = await wait_for_gate(handle, "deploy")
            review = gate_review(view, "bob")
            good = signed(review, handle.id, BOB, datetime.now(UTC))
            cases: dict[str, ReviewDecision] = {
                "unsigned": review,
                "does not verify": good.model_copy(update={"comment": "ship it, and more"}),  # tampered in transit
                "with the key of 'bob'": signed(review, handle.id, MALLORY, datetime.now(UTC)),
            }
            for reason, decision in cases.items():
                event = new_event(
                    "quantum.review.submitted",
                    {"pipeline_id": handle.id, **decision.model_dump(mode="json", exclude_none=True)},
                    source="tests",
                )
                await publish(nc, event, msg_id=event.id)

                async def handled(event_id: str = event.id) -> bool:
                    return any(i == event_id for i, _ in bridge.outcomes)

                await wait_until(handled, what=f"the {reason} review handled")
                letters = [m for m in await dead_letters(nc) if event.id.encode() in (m.data or b"")]
                assert len(letters) == 1 and letters[0].headers is not None, reason
                assert reason in letters[0].headers[REASON_HEADER], letters[0].headers[REASON_HEADER]
            data = {"pipeline_id": handle.id, **good.model_dump(mode="json", exclude_none=True)}
            await publish(nc, new_event("quantum.review.submitted", data, source="tests"))
            result = await handle.result()
            view = await status(handle)
    assert result.status == "succeeded"
    assert [(e.reviewer, e.identity) for e in view.audit] == [("bob", "ed25519:bob")]  # refusals never reached it
