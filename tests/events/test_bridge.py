"""The inbound bridge against a real ``nats-server -js`` and the real Temporal dev server."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter

from events.bridge import REASON_HEADER, Outcome
from events.catalog import INBOUND
from events.envelope import new_event, subject_for
from quantum.stack import TemporalDevServer

from .conftest import (
    RecordingBridge,
    bridge_config,
    bridge_running,
    dead_letters,
    pipeline_event,
    publish,
    runs_with_id,
    settled,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


def queue() -> str:
    return f"bridge-{uuid.uuid4()}"  # nobody polls it: the runs start and wait, which is all these tests need


async def test_an_event_published_twice_starts_one_run(nc: NATS, client: Client) -> None:
    event = pipeline_event()
    await publish(nc, event, msg_id="first")
    await publish(nc, event, msg_id="second")  # same event id, another message id: JetStream keeps both
    bridge = RecordingBridge(nc, client, bridge_config(queue()))
    async with bridge_running(bridge):
        await wait_until(lambda: settled(nc), what="both messages settled")
    assert sorted(outcome for _, outcome in bridge.outcomes) == [Outcome.DUPLICATE, Outcome.STARTED]
    await wait_until(lambda: _count_is(client, f"pipeline-{event.id}", 1), what="one run visible")


async def _count_is(client: Client, workflow_id: str, count: int) -> bool:
    return await runs_with_id(client, workflow_id) == count


async def test_a_bridge_killed_before_acknowledging_gives_one_run(nc: NATS, client: Client) -> None:
    event = pipeline_event()
    task_queue = queue()

    class DiesBeforeAck(RecordingBridge):
        async def _act(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            await super()._act(*args, **kwargs)
            raise asyncio.CancelledError  # the process dies here: started, never acknowledged

    first = DiesBeforeAck(nc, client, bridge_config(task_queue))
    await first.ensure_consumer()
    await publish(nc, event)
    with pytest.raises(asyncio.CancelledError):
        await first.run()
    run_id = (await client.get_workflow_handle(f"pipeline-{event.id}").describe()).run_id

    second = RecordingBridge(nc, client, bridge_config(task_queue))
    async with bridge_running(second):  # the message comes back after ack_wait
        await wait_until(lambda: settled(nc), what="redelivery settled")
    assert second.outcomes and all(o is Outcome.DUPLICATE for _, o in second.outcomes)
    description = await client.get_workflow_handle(f"pipeline-{event.id}").describe()
    assert description.run_id == run_id
    await wait_until(lambda: _count_is(client, f"pipeline-{event.id}", 1), what="one run visible")


async def test_events_wait_out_a_temporal_outage(nc: NATS, stoppable_temporal: TemporalDevServer) -> None:
    server = stoppable_temporal
    await server.start()
    client = await Client.connect(server.address, data_converter=pydantic_data_converter)
    bridge = RecordingBridge(nc, client, bridge_config(queue(), retry_delays=(0.2, 0.5, 1.0)))
    async with bridge_running(bridge):
        first = pipeline_event()
        await publish(nc, first)
        await wait_until(lambda: settled(nc), what="first event started")

        await server.stop()
        during = [pipeline_event(project=f"outage-{n}") for n in range(5)]
        for event in during:
            await publish(nc, event)
        await wait_until(
            lambda: _async(any(o is Outcome.RETRY for _, o in bridge.outcomes)), what="retries while Temporal is down"
        )
        await asyncio.sleep(3)  # several seconds of outage with events arriving
        assert not await settled(nc)

        await server.start()
        await wait_until(lambda: settled(nc), timeout=120, what="all events started after the restart")

    for event in [first, *during]:
        description = await client.get_workflow_handle(f"pipeline-{event.id}").describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
    assert not await dead_letters(nc)


async def _async(value: bool) -> bool:
    return value


BAD_INPUTS = {
    "malformed JSON": (b'{"specversion": "1.0", "id": ', "MalformedEvent"),
    "wrong specversion": (
        json.dumps({**pipeline_event().model_dump(mode="json"), "specversion": "0.3"}).encode(),
        "WrongSpecVersion",
    ),
    "unknown type": (new_event("quantum.pipeline.exploded", {}, source="t").to_bytes(), "UnknownEventType"),
    "missing field": (pipeline_event(requested_by=None).to_bytes(), "data.requested_by"),
    "invalid field": (pipeline_event(project="Not A Name").to_bytes(), "data.project: String should match pattern"),
    "missing attribute": (
        json.dumps({"specversion": "1.0", "type": "quantum.pipeline.requested", "data": {}}).encode(),
        "InvalidEvent: id: Field required",
    ),
    "too large": (pipeline_event(prompt="x" * 5000).to_bytes(), "EventTooLarge"),
    "review of no run": (
        new_event(
            "quantum.review.submitted",
            {"pipeline_id": "pipeline-nope", "gate": "deploy", "reviewer": "bob", "approved": True},
            source="t",
        ).to_bytes(),
        "RunNotFound",
    ),
}


def _subject_of(raw: bytes) -> str | None:
    """The subject of the event's own type when it has a known one (the default subject otherwise)."""
    try:
        event_type = json.loads(raw).get("type", "")
    except ValueError:
        return None
    return subject_for(event_type) if event_type in INBOUND else None


async def test_bad_events_go_to_the_dlq_with_their_reason_and_good_ones_keep_flowing(nc: NATS, client: Client) -> None:
    bridge = RecordingBridge(nc, client, bridge_config(queue(), max_event_bytes=4096))
    good_before, good_after = pipeline_event(), pipeline_event()
    await publish(nc, good_before)
    for raw, _ in BAD_INPUTS.values():
        await publish(nc, raw, subject=_subject_of(raw))
    await publish(nc, good_after)
    async with bridge_running(bridge):
        await wait_until(lambda: settled(nc), what="all settled")

    letters = await dead_letters(nc)
    assert len(letters) == len(BAD_INPUTS)
    by_body = {m.data: (m.headers or {}).get(REASON_HEADER, "") for m in letters}
    for name, (raw, reason) in BAD_INPUTS.items():
        assert raw in by_body, f"{name} not dead-lettered with its original bytes"
        assert reason in by_body[raw], f"{name}: {by_body[raw]!r}"
    for event in (good_before, good_after):
        assert (await client.get_workflow_handle(f"pipeline-{event.id}").describe()).status.name == "RUNNING"


async def test_an_event_that_exhausts_its_deliveries_is_dead_lettered(
    nc: NATS, stoppable_temporal: TemporalDevServer
) -> None:
    await stoppable_temporal.start()
    client = await Client.connect(stoppable_temporal.address, data_converter=pydantic_data_converter)
    await stoppable_temporal.stop()
    bridge = RecordingBridge(
        nc, client, bridge_config(queue(), max_deliver=3, retry_delays=(0.1, 0.2), rpc_timeout_seconds=1.0)
    )
    event = pipeline_event()
    await publish(nc, event)
    async with bridge_running(bridge):
        await wait_until(lambda: settled(nc), timeout=90, what="deliveries exhausted")
    (letter,) = await dead_letters(nc)
    assert letter.data == event.to_bytes()
    assert "DeliveriesExhausted: 3 deliveries" in letter.headers[REASON_HEADER]
    assert [o for _, o in bridge.outcomes] == [Outcome.RETRY, Outcome.RETRY, Outcome.DEAD_LETTERED]


async def test_the_bridge_says_how_old_its_oldest_waiting_event_is(nc: NATS, client: Client) -> None:
    """The lag is the age of the first inbound event after the consumer's ack floor; outbound events on the same
    stream do not count, and it is zero once every event is settled."""
    bridge = RecordingBridge(nc, client, bridge_config(queue()))
    await bridge.ensure_consumer()
    assert await bridge.lag() == (0.0, 0)
    await nc.jetstream().publish(subject_for("quantum.pipeline.started"), b"{}")  # outbound: not the bridge's
    await publish(nc, pipeline_event())
    await asyncio.sleep(1.5)
    seconds, waiting = await bridge.lag()
    assert waiting == 1 and 1.5 <= seconds < 60
    async with bridge_running(bridge):
        await wait_until(lambda: settled(nc), what="the event started")
    assert await bridge.lag() == (0.0, 0)
