"""Hostile input at the bridge and at the CLI's bus helpers, on a real ``nats-server -js`` and the real dev server.

Each test holds one way a message could stop, stall or mislead the bridge: too large to copy into the DLQ, nested
too deeply, crashing a part of the bridge, crashing the whole process, claiming another type than its subject,
carrying text that is not safe in a header; and the helpers that read the streams back.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY
from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client, WorkflowExecutionStatus

from events.bridge import Outcome
from events.catalog import EventType
from events.dead_letters import (
    EXCERPT_BYTES,
    MAX_HEADER_CHARS,
    ORIGINAL_DIGEST_HEADER,
    ORIGINAL_SEQUENCE_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    PARTIAL_HEADER,
    REASON_HEADER,
    header_value,
    wire_size,
)
from events.envelope import CloudEvent, new_event
from events.models import PipelineRequest
from events.streams import DLQ_STREAM, EVENTS_STREAM
from quantum import bus

from .conftest import (
    RecordingBridge,
    bridge_config,
    bridge_running,
    dead_letters,
    pipeline_event,
    publish,
    settled,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)

PIPELINE_SUBJECT = "quantum.events.pipeline.requested"


def queue() -> str:
    return f"hostile-{uuid.uuid4()}"  # nobody polls it: the runs start and wait


async def publish_raw(nc: NATS, raw: bytes, *, msg_id: str, subject: str = PIPELINE_SUBJECT) -> int:
    ack = await nc.jetstream().publish(subject, raw, headers={"Nats-Msg-Id": msg_id})
    return int(ack.seq)


def outcomes_of(bridge: RecordingBridge, msg_id: str) -> list[Outcome]:
    return [outcome for mid, outcome in bridge.outcomes if mid == msg_id]


async def status_of(client: Client, event: CloudEvent) -> WorkflowExecutionStatus | None:
    return (await client.get_workflow_handle(f"pipeline-{event.id}").describe()).status


def padded_event(wire_bytes: int, msg_id: str) -> bytes:
    """A pipeline event that, sent with the header ``Nats-Msg-Id: <msg_id>``, is exactly ``wire_bytes`` on the wire."""
    body: dict[str, Any] = {**pipeline_event().model_dump(mode="json"), "padding": ""}
    unpadded = wire_size(json.dumps(body).encode(), {"Nats-Msg-Id": msg_id})
    body["padding"] = "x" * (wire_bytes - unpadded)
    raw = json.dumps(body).encode()
    assert wire_size(raw, {"Nats-Msg-Id": msg_id}) == wire_bytes
    return raw


async def test_an_event_too_large_to_copy_is_dead_lettered_partially_and_replayed_from_its_stream(
    nc: NATS, client: Client
) -> None:
    limit = nc.max_payload
    replayable_id = f"big-{uuid.uuid4().hex}{uuid.uuid4().hex}"[:64]  # room left for the replay's own id
    replayable = padded_event(limit, replayable_id)
    tight = padded_event(limit, "t")  # exactly the server's limit with the shortest id
    replayable_seq = await publish_raw(nc, replayable, msg_id=replayable_id)
    tight_seq = await publish_raw(nc, tight, msg_id="t")
    good = pipeline_event()
    await publish(nc, good)

    bridge = RecordingBridge(nc, client, bridge_config(queue()))
    async with bridge_running(bridge):
        await wait_until(lambda: settled(nc), what="the large events dead-lettered and the good one started")

    assert nc.is_connected and nc.stats["reconnects"] == 0, "the server closed the bridge's connection"
    assert await status_of(client, good) == WorkflowExecutionStatus.RUNNING
    letters = {int(m.headers[ORIGINAL_SEQUENCE_HEADER]): m for m in await dead_letters(nc) if m.headers}
    assert set(letters) == {replayable_seq, tight_seq}
    for seq, original in ((replayable_seq, replayable), (tight_seq, tight)):
        letter = letters[seq]
        assert letter.headers is not None and letter.data
        assert letter.headers[REASON_HEADER].startswith("EventTooLarge: payload is")
        assert letter.headers[ORIGINAL_SUBJECT_HEADER] == PIPELINE_SUBJECT
        assert PARTIAL_HEADER in letter.headers
        assert 0 < len(letter.data) <= EXCERPT_BYTES and original.startswith(letter.data)
        assert len(letter.headers[ORIGINAL_DIGEST_HEADER]) == 64

    listed = {int(letter.original_sequence): letter for letter in await bus.dead_letters(nc)}
    assert all(letter.partial for letter in listed.values())
    assert listed[replayable_seq].original_size == len(replayable)

    # replayed from QUANTUM_EVENTS, whole
    assert await bus.replay_dead_letter(nc, listed[replayable_seq].sequence) == PIPELINE_SUBJECT
    info = await nc.jetstream().stream_info(EVENTS_STREAM)
    assert (await nc.jetstream().get_msg(EVENTS_STREAM, info.state.last_seq)).data == replayable
    assert [letter.original_sequence for letter in await bus.dead_letters(nc)] == [str(tight_seq)]

    # too large to publish again with a replay id of its own: refused, the connection stays up
    with pytest.raises(bus.BusError, match="over the server's limit"):
        await bus.replay_dead_letter(nc, listed[tight_seq].sequence)
    # gone from its stream: refused, saying so
    await nc.jetstream().delete_msg(EVENTS_STREAM, tight_seq)
    with pytest.raises(bus.BusError, match=f"the original \\({EVENTS_STREAM} sequence {tight_seq}\\) is gone"):
        await bus.replay_dead_letter(nc, listed[tight_seq].sequence)
    assert nc.is_connected and nc.stats["reconnects"] == 0


def test_header_values_are_single_printable_lines_of_bounded_length() -> None:
    assert header_value("plain reason: data.project") == "plain reason: data.project"
    assert header_value("a\r\nInjected: yes") == "a\\r\\nInjected: yes"
    assert header_value("nul\x00 esc\x1b del\x7f sep\u2028 lone\ud800") == (
        "nul\\x00 esc\\x1b del\\x7f sep\\u2028 lone\\ud800"
    )
    long = header_value("é" * 5000)
    assert len(long) == MAX_HEADER_CHARS and long.endswith("...")
    assert len(header_value("\n" * 5000)) <= MAX_HEADER_CHARS


def _event_with_data_key(key: str) -> bytes:
    body = pipeline_event().model_dump(mode="json")
    body["data"][key] = 1  # an unknown field: the reason names it
    return json.dumps(body).encode()  # ensure_ascii: control characters and lone surrogates as JSON escapes


async def test_reasons_holding_event_text_are_made_safe_in_headers(nc: NATS, client: Client) -> None:
    hostile = {
        "crlf": _event_with_data_key("x\r\nQuantum-Injected: yes\r\n\r\nbody"),
        "surrogate": _event_with_data_key("\ud800"),
        "controls": _event_with_data_key("\x00\x1b[31m\x7f"),
        "long": _event_with_data_key("k" * 20000),
    }
    for msg_id, raw in hostile.items():
        await publish_raw(nc, raw, msg_id=msg_id)
    bridge = RecordingBridge(nc, client, bridge_config(queue(), max_deliver=3, retry_delays=(0.1, 0.2)))
    async with bridge_running(bridge):
        await wait_until(lambda: settled(nc), what="all settled")

    letters = await dead_letters(nc)
    assert sorted(m.data or b"" for m in letters) == sorted(hostile.values()), "every hostile event is dead-lettered"
    for letter in letters:
        headers = letter.headers or {}
        assert "Quantum-Injected" not in headers
        for value in headers.values():
            assert value.isprintable() and len(value) <= MAX_HEADER_CHARS, value
        assert headers[REASON_HEADER].startswith("InvalidEvent: data.")
    reasons = {m.data: (m.headers or {})[REASON_HEADER] for m in letters}
    assert "x\\r\\nQuantum-Injected: yes\\r\\n\\r\\nbody" in reasons[hostile["crlf"]]
    assert "data.\\x00\\x1b[31m\\x7f: Extra inputs are not permitted" in reasons[hostile["controls"]]
    assert reasons[hostile["long"]].startswith("InvalidEvent: data." + "k" * 80 + ": Extra inputs")
    for msg_id in hostile:
        assert outcomes_of(bridge, msg_id) == [Outcome.DEAD_LETTERED], msg_id


def _nested(depth: int) -> bytes:
    body = pipeline_event().model_dump(mode="json")
    return json.dumps(body).encode().replace(b'"data": {', b'"nest": ' + b"[" * depth + b"]" * depth + b', "data": {')


async def test_input_the_json_decoder_chokes_on_is_malformed_and_dead_lettered_at_once(
    nc: NATS, client: Client
) -> None:
    valid = pipeline_event().to_bytes()
    bad = {
        "deep": (_nested(10_000), "MalformedEvent: nested deeper than 64 levels"),
        "just-too-deep": (_nested(64), "MalformedEvent: nested deeper than 64 levels"),
        "huge-number": (valid.replace(b'"data":{', b'"n":' + b"9" * 5000 + b',"data":{'), "MalformedEvent: not JSON"),
        "nan": (valid.replace(b'"data":{', b'"n":NaN,"data":{'), "MalformedEvent: not JSON: NaN"),
        "utf-16": (valid.decode().encode("utf-16"), "MalformedEvent: not UTF-8"),
        "unknown-type": (
            new_event("quantum.hostile_zz.made_up", {}, source="t").to_bytes(),
            "UnknownEventType",
        ),
    }
    fine = _nested(60)  # deep, but within the limit: an extension attribute the bridge carries along
    for msg_id, (raw, _) in bad.items():
        await publish_raw(nc, raw, msg_id=msg_id)
    await publish_raw(nc, fine, msg_id="fine")
    bridge = RecordingBridge(nc, client, bridge_config(queue(), max_deliver=3, retry_delays=(0.1, 0.2)))
    async with bridge_running(bridge):
        await wait_until(lambda: settled(nc), what="all settled")

    reasons = {m.data: (m.headers or {}).get(REASON_HEADER, "") for m in await dead_letters(nc)}
    for msg_id, (raw, reason) in bad.items():
        assert raw in reasons, f"{msg_id} not dead-lettered"
        assert reasons[raw].startswith(reason), f"{msg_id}: {reasons[raw]!r}"
        assert outcomes_of(bridge, msg_id) == [Outcome.DEAD_LETTERED], f"{msg_id} was not refused at once"
    assert outcomes_of(bridge, "fine") == [Outcome.STARTED]
    # metric labels name only the product's own event types, whatever an event claims
    sample = {"type": "quantum.hostile_zz.made_up", "outcome": "dead_lettered"}
    assert REGISTRY.get_sample_value("quantum_bridge_events_total", sample) is None


class PoisonedBridge(RecordingBridge):
    """A part of the bridge that fails on some events (a bug nobody foresaw); records when the bridge backs off."""

    def __init__(self, *args: Any, poison: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poison = poison
        self.backoffs: list[float] = []

    async def _act(self, kind: EventType, event: CloudEvent, data: BaseModel) -> Outcome:
        if event.id in self.poison:
            raise ZeroDivisionError("the stubbed part fails on this event")
        return await super()._act(kind, event, data)

    def _back_off(self, seconds: float) -> None:
        self.backoffs.append(seconds)
        super()._back_off(seconds)


async def test_a_poison_message_is_retried_alone_then_dead_lettered_while_good_events_start(
    nc: NATS, client: Client
) -> None:
    poison = pipeline_event()
    before = [pipeline_event() for _ in range(3)]
    between = [pipeline_event() for _ in range(3)]
    after = [pipeline_event() for _ in range(3)]
    await publish(nc, poison, msg_id="poison")
    for event in before:
        await publish(nc, event, msg_id=f"good-{event.id}")
    await publish_raw(nc, _nested(10_000), msg_id="deep")
    for event in between:
        await publish(nc, event, msg_id=f"good-{event.id}")

    config = bridge_config(queue(), max_deliver=5, retry_delays=(1.0, 2.0, 4.0))
    bridge = PoisonedBridge(nc, client, config, poison={poison.id})
    async with bridge_running(bridge):
        await wait_until(lambda: _has(bridge, "poison"), what="the poison message's first failure")
        for event in after:
            await publish(nc, event, msg_id=f"good-{event.id}")
        await wait_until(lambda: settled(nc), timeout=120, what="all settled")

    assert outcomes_of(bridge, "poison") == [Outcome.FAILED, Outcome.FAILED, Outcome.DEAD_LETTERED]
    assert outcomes_of(bridge, "deep") == [Outcome.DEAD_LETTERED]
    poison_done = bridge.outcomes.index(("poison", Outcome.DEAD_LETTERED))
    for event in [*before, *between, *after]:
        started = bridge.outcomes.index((f"good-{event.id}", Outcome.STARTED))
        assert started < poison_done, "a good event waited for the poison message"
        assert await status_of(client, event) == WorkflowExecutionStatus.RUNNING
    assert bridge.backoffs == [], "the bridge backed off for a failure that was not Temporal's"

    reasons = {m.headers.get("Nats-Msg-Id", ""): m.headers[REASON_HEADER] for m in await dead_letters(nc) if m.headers}
    assert reasons[f"dlq-{EVENTS_STREAM}-1"] == (
        "UnexpectedFailure: 3 deliveries failed; last error: ZeroDivisionError: the stubbed part fails on this event"
    )
    assert any(r.startswith("MalformedEvent: nested deeper than 64") for r in reasons.values())


async def _has(bridge: RecordingBridge, msg_id: str) -> bool:
    return bool(outcomes_of(bridge, msg_id))


class CrashingBridge(RecordingBridge):
    """The bridge process dies (here: its task is cancelled) whenever it acts on the poison event."""

    def __init__(self, *args: Any, poison: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poison = poison

    async def _act(self, kind: EventType, event: CloudEvent, data: BaseModel) -> Outcome:
        if event.id == self.poison:
            raise asyncio.CancelledError
        return await super()._act(kind, event, data)


async def test_a_message_that_kills_the_bridge_on_every_delivery_ends_in_the_dlq(nc: NATS, client: Client) -> None:
    poison = pipeline_event()
    await publish(nc, poison, msg_id="killer")
    config = bridge_config(queue(), max_deliver=3)
    for _ in range(config.max_deliver - 1):  # each run dies on the poison event; its delivery is never settled
        with pytest.raises(asyncio.CancelledError):
            await CrashingBridge(nc, client, config, poison=poison.id).run()

    last = CrashingBridge(nc, client, config, poison=poison.id)
    async with bridge_running(last):  # the last delivery, after ack_wait
        await wait_until(lambda: settled(nc), what="the last delivery settled")
    assert last.outcomes == [("killer", Outcome.DEAD_LETTERED)]
    (letter,) = await dead_letters(nc)
    assert letter.data == poison.to_bytes()
    assert letter.headers is not None
    assert letter.headers[REASON_HEADER] == (
        "DeliveriesExhausted: 3 deliveries, the last kept for dead-lettering; 2 failed; "
        "last error: none seen by this bridge process (a delivery may have ended the process)"
    )


async def test_an_event_is_routed_only_by_its_subject_type_and_never_by_its_body_alone(
    nc: NATS, client: Client
) -> None:
    task_queue = queue()
    request = PipelineRequest(project="victim", prompt="a slugify helper", requested_by="alice")
    victim = await client.start_workflow(
        "DevSecOpsPipelineWorkflow", request, id=f"pipeline-{uuid.uuid4()}", task_queue=task_queue
    )
    cancel = new_event(
        "quantum.pipeline.cancel_requested",
        {"pipeline_id": victim.id, "requested_by": "mallory", "reason": "allowed on pipeline.requested only"},
        source="t",
    )
    review = new_event(
        "quantum.review.submitted",
        {"pipeline_id": victim.id, "gate": "deploy", "reviewer": "mallory", "approved": True},
        source="t",
    )
    await publish(nc, cancel, subject=PIPELINE_SUBJECT, msg_id="cancel")
    await publish(nc, review, subject="quantum.events.code.requested", msg_id="review")
    bridge = RecordingBridge(nc, client, bridge_config(task_queue))
    async with bridge_running(bridge):
        await wait_until(lambda: settled(nc), what="all settled")

    assert outcomes_of(bridge, "cancel") == [Outcome.DEAD_LETTERED]
    assert outcomes_of(bridge, "review") == [Outcome.DEAD_LETTERED]
    history = [event.event_type async for event in victim.fetch_history_events()]
    assert HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED not in history
    assert HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED not in history
    assert (await victim.describe()).status == WorkflowExecutionStatus.RUNNING
    reasons = {m.data: (m.headers or {}).get(REASON_HEADER, "") for m in await dead_letters(nc)}
    assert reasons[cancel.to_bytes()] == (
        "WrongSubject: an event of type quantum.pipeline.cancel_requested travels on "
        f"quantum.events.pipeline.cancel_requested, but it arrived on {PIPELINE_SUBJECT}"
    )
    assert reasons[review.to_bytes()].startswith("WrongSubject: an event of type quantum.review.submitted")


async def _tail_first(nc: NATS, count: int) -> list[Any]:
    found: list[Any] = []
    events = bus.tail(nc, from_start=True)
    async for event in events:
        found.append(event)
        if len(found) == count:
            break
    await events.aclose()  # type: ignore[attr-defined]
    return found


async def test_tail_yields_only_events_shaped_as_its_callers_read_them(nc: NATS) -> None:
    good = pipeline_event()
    bodies = [
        b"[1, 2]",
        b"42",
        b"[" * 10_000 + b"]" * 10_000,
        b'{"type": 5, "data": {}}',
        b'{"type": "quantum.stage.failed", "data": [1]}',
        b"\xff\xfe",
        good.to_bytes(),
    ]
    for n, raw in enumerate(bodies):
        await publish_raw(nc, raw, msg_id=f"tail-{n}")
    found = await asyncio.wait_for(_tail_first(nc, len(bodies)), 60)
    for event in found:
        assert isinstance(event, dict) and isinstance(event["type"], str) and isinstance(event["data"], dict)
    assert [event["type"] for event in found] == ["(malformed)"] * 6 + ["quantum.pipeline.requested"]
    assert found[2]["data"]["problem"] == "nested deeper than 64 levels of arrays and objects"
    assert found[-1]["id"] == good.id
    with pytest.raises(bus.BusError, match="not an event type"):
        await asyncio.wait_for(_tail_first_of_type(nc, "quantum.events.>"), 10)


async def _tail_first_of_type(nc: NATS, event_type: str) -> Any:
    async for event in bus.tail(nc, event_type=event_type):
        return event


async def _letter(nc: NATS, n: int, subject: str = PIPELINE_SUBJECT) -> int:
    headers = {REASON_HEADER: f"reason {n}", ORIGINAL_SUBJECT_HEADER: subject, ORIGINAL_SEQUENCE_HEADER: str(n)}
    ack = await nc.jetstream().publish("quantum.dlq.events", f"letter {n}".encode(), headers=headers)
    return int(ack.seq)


async def test_dead_letters_are_read_a_page_at_a_time(nc: NATS) -> None:
    sequences = [await _letter(nc, n) for n in range(6)]
    await nc.jetstream().delete_msg(DLQ_STREAM, sequences[1])  # replayed and removed
    first = await bus.dead_letters(nc, limit=2)
    assert [letter.sequence for letter in first] == [sequences[0], sequences[2]]
    second = await bus.dead_letters(nc, after=first[-1].sequence, limit=2)
    assert [letter.sequence for letter in second] == sequences[3:5]
    assert [letter.reason for letter in second] == ["reason 3", "reason 4"]
    third = await bus.dead_letters(nc, after=second[-1].sequence, limit=2)
    assert [letter.sequence for letter in third] == sequences[5:]
    assert await bus.dead_letters(nc, after=sequences[-1]) == []
    assert not any(letter.partial for letter in first + second + third)


async def test_a_dead_letter_is_replayed_only_onto_an_inbound_event_subject(nc: NATS) -> None:
    js = nc.jetstream()
    outbound = await _letter(nc, 1, subject="quantum.events.pipeline.started")
    api = await _letter(nc, 2, subject=f"$JS.API.STREAM.DELETE.{EVENTS_STREAM}")
    before = (await js.stream_info(EVENTS_STREAM)).state.messages
    for sequence in (outbound, api):
        with pytest.raises(bus.BusError, match="not an inbound event subject"):
            await bus.replay_dead_letter(nc, sequence)
    info = await js.stream_info(EVENTS_STREAM)  # still there, unchanged
    assert info.state.messages == before
    assert [letter.sequence for letter in await bus.dead_letters(nc)] == [outbound, api]
