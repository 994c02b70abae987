"""A flood of review events on the bus, against the real bridge, nats-server and dev server: bad reviews never hold
up good events.

- With reviewers' keys, 1,500 ``quantum.review.submitted`` events with bad signatures are dead-lettered by the bridge
  itself, without one call to Temporal, and a pipeline request published behind them starts.
- Without keys at the bridge, the reviews go to their run (refused there), a few at a time per run, in a lane of
  their own: a request published behind 1,500 of them starts while most still wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from events import signing
from events.bridge import Outcome
from events.envelope import new_event
from events.models import ReviewDecision
from quantum.audit_keys import public_bytes
from workflows.models import RunStatusView
from workflows.reviews import signed_message

from ..workflows.conftest import harness_with, wait_for_gate
from .conftest import RecordingBridge, bridge_config, bridge_running, dead_letters, pipeline_event, publish

pytestmark = pytest.mark.workflow

FLOOD = 1500


class CountingBridge(RecordingBridge):
    """The real bridge, counting the calls it makes to runs and the most reviews of one run in flight at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.active = 0
        self.peak = 0

    def _handle_for(self, pipeline_id: str) -> WorkflowHandle[Any, Any]:
        self.calls += 1
        return super()._handle_for(pipeline_id)

    @contextlib.asynccontextmanager
    async def _slot(self, pipeline_id: str) -> AsyncIterator[None]:
        async with super()._slot(pipeline_id):
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                yield
            finally:
                self.active -= 1


def review_event(view: RunStatusView, reviewer: str, *, signer: Any | None) -> bytes:
    decision = ReviewDecision(
        gate="deploy",
        reviewer=reviewer,
        approved=True,
        digest=view.gate_digests["deploy"],
        challenge=view.gate_challenges.get("deploy"),
        nonce=secrets.token_urlsafe(18),
        expires_at=(datetime.now(UTC) + timedelta(minutes=10)).isoformat(),
    )
    if signer is not None:
        decision = decision.model_copy(
            update={"signature": signing.sign(signer, signed_message(decision, view.pipeline_id))}
        )
    data = {"pipeline_id": view.pipeline_id, **decision.model_dump(mode="json", exclude_none=True)}
    return new_event("quantum.review.submitted", data, source="tests").to_bytes()


async def publish_flood(nc: NATS, bodies: list[bytes]) -> float:
    """Publish every body (acknowledged by the stream); returns the seconds it took."""
    js = nc.jetstream()
    began = time.perf_counter()
    for start in range(0, len(bodies), 250):
        await asyncio.gather(
            *(js.publish("quantum.events.review.submitted", body, timeout=30) for body in bodies[start : start + 250])
        )
    return time.perf_counter() - began


async def started(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return False
    return True


@pytest.mark.timeout(600)
async def test_badly_signed_review_events_are_refused_at_the_bridge_and_a_request_behind_them_starts(
    client: Client, nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    from ..workflows.test_review_gates import BOB, MALLORY, key_folder

    keys = key_folder(tmp_path)
    async with harness_with(client, nats_url, tmp_path, reviewer_keys=keys) as harness:
        async with harness.worker():
            handle = await harness.start_pipeline(environment="prod", approval_policy={"reviewers": ["bob"]})
            view = await wait_for_gate(handle, "deploy")
            took = await publish_flood(nc, [review_event(view, "bob", signer=MALLORY) for _ in range(FLOOD)])
            request = pipeline_event()
            await publish(nc, request, msg_id=request.id)
            published = time.perf_counter()
            bridge = CountingBridge(
                nc,
                harness.client,
                bridge_config(harness.task_queue),
                reviewer_keys={"bob": public_bytes(BOB)},
                max_review_validity_seconds=3600,
            )
            async with bridge_running(bridge):
                workflow_id = f"pipeline-{request.id}"
                while not await started(harness.client, workflow_id):
                    await asyncio.sleep(0.05)
                started_after = time.perf_counter() - published
                while len(bridge.outcomes) < FLOOD + 1:
                    await asyncio.sleep(0.1)
                drained_after = time.perf_counter() - published
            await harness.client.get_workflow_handle(workflow_id).terminate("test over")
            await handle.terminate("test over")
    print(
        f"{FLOOD} bad reviews published in {took:.1f} s; the request behind them started after {started_after:.2f} s;"
        f" all handled after {drained_after:.1f} s"
    )
    assert bridge.calls == 0  # not one review reached Temporal
    letters = await dead_letters(nc)
    reasons = [m.headers.get("Quantum-Dlq-Reason", "") for m in letters if m.headers]
    assert len(reasons) == FLOOD
    assert all(r.startswith("ReviewRefused: the signature does not verify with the key of 'bob'") for r in reasons)


@pytest.mark.timeout(600)
async def test_review_events_have_a_lane_of_their_own_and_few_at_a_time_per_run(
    client: Client, nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with harness_with(client, nats_url, tmp_path) as harness:
        async with harness.worker():
            handle = await harness.start_pipeline(environment="prod", approval_policy={"reviewers": ["bob"]})
            view = await wait_for_gate(handle, "deploy")
            await publish_flood(nc, [review_event(view, f"stranger-{n}", signer=None) for n in range(FLOOD)])
            request = pipeline_event()
            await publish(nc, request, msg_id=request.id)
            bridge = CountingBridge(nc, harness.client, bridge_config(harness.task_queue))
            async with bridge_running(bridge):
                workflow_id = f"pipeline-{request.id}"
                while not await started(harness.client, workflow_id):
                    await asyncio.sleep(0.05)
                reviews_handled = sum(1 for i, _ in bridge.outcomes if i != request.id) if bridge.outcomes else 0
                while len(bridge.outcomes) < 200:  # some reviews refused by the run, to see them through
                    await asyncio.sleep(0.1)
            await harness.client.get_workflow_handle(workflow_id).terminate("test over")
            view_after = await handle.query("status", result_type=RunStatusView)
            await handle.terminate("test over")
    print(f"the request started with {reviews_handled} of {FLOOD} reviews before it handled")
    assert reviews_handled < FLOOD // 2, reviews_handled  # the request did not wait for the reviews before it
    assert bridge.peak == bridge.config.reviews_per_run == 2  # one run's reviews, two at a time
    assert view_after.gates["deploy"] == "pending" and view_after.audit == []  # refused Updates leave nothing
    reasons = [m.headers.get("Quantum-Dlq-Reason", "") for m in await dead_letters(nc) if m.headers]
    assert reasons and all("is not a reviewer allowed" in r for r in reasons), reasons[:3]


class BusyRun:
    """A run Temporal says is too busy for another Update (as under a flood of concurrent Updates)."""

    def __init__(self) -> None:
        self.calls = 0

    async def execute_update(self, *_: Any, **__: Any) -> None:
        self.calls += 1
        raise RPCError("Workflow is busy.", RPCStatusCode.RESOURCE_EXHAUSTED, b"")


@pytest.mark.timeout(300)
async def test_a_run_too_busy_for_a_review_retries_that_review_alone_and_backs_nobody_off(
    client: Client, nc: NATS
) -> None:
    busy = BusyRun()

    class Bridge(RecordingBridge):
        backoffs: list[float] = []

        def _handle_for(self, pipeline_id: str) -> Any:
            return busy if pipeline_id == "pipeline-busy" else super()._handle_for(pipeline_id)

        def _back_off(self, seconds: float) -> None:
            self.backoffs.append(seconds)
            super()._back_off(seconds)

    data = {"pipeline_id": "pipeline-busy", "gate": "deploy", "reviewer": "bob", "approved": True}
    review = new_event("quantum.review.submitted", data, source="tests")
    request = pipeline_event()
    bridge = Bridge(nc, client, bridge_config(f"busy-{secrets.token_hex(4)}", retry_delays=(0.2, 0.4)))
    async with bridge_running(bridge):
        await publish(nc, review)
        await publish(nc, request, msg_id=request.id)
        while not await started(client, f"pipeline-{request.id}") or busy.calls < 3:
            await asyncio.sleep(0.05)
    await client.get_workflow_handle(f"pipeline-{request.id}").terminate("test over")
    outcomes = [o for i, o in bridge.outcomes if i != request.id]
    assert busy.calls >= 3 and set(outcomes) == {Outcome.FAILED}  # retried, alone
    assert bridge.backoffs == []  # nobody else waited
    assert not await dead_letters(nc)
