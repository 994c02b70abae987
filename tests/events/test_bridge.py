"""The inbound bridge against a real ``nats-server -js`` and the real Temporal dev server."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter

from events.bridge import Outcome, TemporalUnavailable
from events.catalog import INBOUND
from events.dead_letters import REASON_HEADER
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


async def test_a_slow_message_does_not_hold_back_the_ones_behind_it(nc: NATS, client: Client) -> None:
    """Up to a batch of messages are in hand at once, and a fetch asks for as many as were settled: the events after
    a slow one start while it is still in hand (a bridge that waited for its whole batch would start none)."""
    events = [pipeline_event() for _ in range(8)]
    slow_id = "slow"
    release = asyncio.Event()

    class OneSlowMessage(RecordingBridge):
        async def handle(self, msg):  # type: ignore[no-untyped-def]
            if msg.headers and msg.headers.get("Nats-Msg-Id") == slow_id:
                await release.wait()
            return await super().handle(msg)

    await publish(nc, events[0], msg_id=slow_id)
    for n, event in enumerate(events[1:]):
        await publish(nc, event, msg_id=f"quick-{n}")
    bridge = OneSlowMessage(nc, client, bridge_config(queue(), batch=2, ack_wait_seconds=60.0))
    async with bridge_running(bridge):
        await wait_until(lambda: _started(bridge, 7), what="the seven quick events started")
        assert slow_id not in [message for message, _ in bridge.outcomes]
        release.set()
        await wait_until(lambda: _started(bridge, 8), what="the slow one started too")


async def _started(bridge: RecordingBridge, count: int) -> bool:
    return sum(outcome is Outcome.STARTED for _, outcome in bridge.outcomes) >= count


async def test_a_burst_of_temporal_failures_backs_the_bridge_off_once(nc: NATS, client: Client) -> None:
    """Twenty messages in hand when Temporal stops taking calls fail one after another within a second: the bridge
    pauses its fetching once for the burst. (Backing off again for each failure that settles, each pause longer than
    the last, held a hundred copies of one event for over a minute.) Once Temporal takes calls, all twenty start."""
    events = [pipeline_event() for _ in range(20)]
    for n, event in enumerate(events):
        await publish(nc, event, msg_id=f"burst-{n}")
    refused: set[str] = set()

    class TemporalGoneAMoment(RecordingBridge):
        backoffs: list[float] = []

        async def _act(self, kind, event, data):  # type: ignore[no-untyped-def]
            if event.id not in refused:
                refused.add(event.id)
                await asyncio.sleep(0.03 * len(refused))  # the calls time out one after another
                raise TemporalUnavailable("UNAVAILABLE: the server went away")
            return await super()._act(kind, event, data)

        def _back_off(self, seconds: float) -> None:
            self.backoffs.append(seconds)
            super()._back_off(seconds)

    bridge = TemporalGoneAMoment(nc, client, bridge_config(queue(), batch=32, retry_delays=(1.0, 2.0, 4.0)))
    async with bridge_running(bridge):
        await wait_until(lambda: _started(bridge, 20), timeout=60, what="all twenty started")
    assert [o for _, o in bridge.outcomes].count(Outcome.RETRY) == 20
    assert bridge.backoffs == [1.0], bridge.backoffs
