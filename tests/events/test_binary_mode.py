"""Binary-mode CloudEvents (the NATS binding: attributes in ``ce-`` headers, the data in the body): parsed into the
same event as structured mode, with the same checks and bounds; at the bridge, on a real ``nats-server -js`` and
the real dev server, started like a structured event, or dead-lettered with a reason naming the problem."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter

from events.bridge import Outcome
from events.envelope import (
    EventError,
    EventTooLarge,
    InvalidEvent,
    MalformedEvent,
    WrongSpecVersion,
    parse_envelope,
)

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

PIPELINE_SUBJECT = "quantum.events.pipeline.requested"
MAX_BYTES = 4096
REASON_HEADER = "Quantum-Dlq-Reason"  # what a dead letter carries (docs/events.md)
ORIGINAL_SEQUENCE_HEADER = "Quantum-Original-Sequence"
DATA = {"project": "binary-app", "prompt": "a slugify helper for titles", "requested_by": "alice"}


def ce_headers(event_id: str | None = None, **changed: str | None) -> dict[str, str]:
    """The headers of a binary-mode ``quantum.pipeline.requested``; a value of None leaves its header out."""
    headers: dict[str, str | None] = {
        "ce-specversion": "1.0",
        "ce-id": event_id or str(uuid.uuid4()),
        "ce-source": "%2Ftests%2Fbinary%20mode",
        "ce-type": "quantum.pipeline.requested",
        "ce-time": "2026-01-01T12:00:00Z",
        "ce-datacontenttype": "application/json",
    }
    headers.update({f"ce-{name}": value for name, value in changed.items()})
    return {name: value for name, value in headers.items() if value is not None}


BODY = json.dumps(DATA).encode()


def test_a_binary_mode_event_is_the_structured_event_it_encodes() -> None:
    structured = pipeline_event(**DATA)
    headers = {
        "ce-specversion": "1.0",
        "ce-id": structured.id,
        "ce-source": structured.source,
        "ce-type": structured.type,
        "ce-time": structured.model_dump(mode="json")["time"],
        "Nats-Msg-Id": "anything",
    }
    binary = parse_envelope(json.dumps(structured.data).encode(), max_bytes=MAX_BYTES, headers=headers)
    assert binary == parse_envelope(structured.to_bytes(), max_bytes=MAX_BYTES)


def test_header_values_are_percent_decoded_and_unquoted_and_names_are_any_case() -> None:
    headers = {
        "CE-SpecVersion": "1.0",
        "Ce-Id": "evt-1",
        "ce-source": '"/tests/quoted \\"source\\""',
        "ce-type": "quantum.pipeline.requested",
        "ce-subject": "caf%C3%A9%20%E2%82%AC",
        "ce-partition": "p%2541",
        "Content-Type": "application/json; charset=utf-8",
    }
    event = parse_envelope(BODY, max_bytes=MAX_BYTES, headers=headers)
    assert (event.id, event.source, event.subject) == ("evt-1", '/tests/quoted "source"', "café €")
    assert event.model_extra == {"partition": "p%41"}  # one round of decoding only
    assert event.data == DATA and event.datacontenttype == "application/json"


def test_a_cloudevents_content_type_keeps_a_message_structured_whatever_its_headers() -> None:
    structured = pipeline_event(**DATA)
    headers = {"Content-Type": "application/cloudevents+json", "ce-id": "not-this-one"}
    assert parse_envelope(structured.to_bytes(), max_bytes=MAX_BYTES, headers=headers).id == structured.id
    assert parse_envelope(structured.to_bytes(), max_bytes=MAX_BYTES, headers={"Nats-Msg-Id": "x"}) == structured


REFUSED: dict[str, tuple[dict[str, str], bytes, type[EventError], str]] = {
    "no specversion header": (
        ce_headers(specversion=None),
        BODY,
        WrongSpecVersion,
        "specversion must be '1.0', got None in header ce-specversion",
    ),
    "other specversion": (ce_headers(specversion="0.3"), BODY, WrongSpecVersion, "got '0.3'"),
    "no id": (ce_headers(id=None), BODY, InvalidEvent, "id: Field required"),
    "no source": (ce_headers(source=None), BODY, InvalidEvent, "source: Field required"),
    "type of another product": (ce_headers(type="com.example.thing"), BODY, InvalidEvent, "type: String should match"),
    "text data": (
        ce_headers(datacontenttype="text/plain"),
        b"hello",
        InvalidEvent,
        "binary mode carries JSON data only, got 'text/plain' (header ce-datacontenttype)",
    ),
    "text content type header": (
        {**ce_headers(datacontenttype=None), "Content-Type": "text/csv"},
        b"a,b",
        InvalidEvent,
        "got 'text/csv' (header Content-Type)",
    ),
    "content types disagree": (
        {**ce_headers(), "Content-Type": "text/plain"},
        BODY,
        InvalidEvent,
        "disagree",
    ),
    "body not json": (ce_headers(), b"{not json", MalformedEvent, "the body (a binary-mode event's data) is not JSON"),
    "body not an object": (ce_headers(), b"[1, 2]", InvalidEvent, "data: Input should be a valid dictionary"),
    "body nested deeply": (ce_headers(), b"[" * 100 + b"]" * 100, MalformedEvent, "nested deeper than 64"),
    "two headers of one attribute": (
        {**ce_headers(), "CE-ID": "other"},
        BODY,
        InvalidEvent,
        "both give the attribute id",
    ),
    "ce-data header": ({**ce_headers(), "ce-data": "{}"}, BODY, InvalidEvent, "the data is the message body"),
    "attribute name not a-z0-9": (
        {**ce_headers(), "ce-trace_id": "x"},
        BODY,
        InvalidEvent,
        "names no CloudEvents attribute",
    ),
    "non-ascii value": (ce_headers(source="/tests/café"), BODY, InvalidEvent, "header ce-source: not printable ASCII"),
    "replacement character": (ce_headers(source="/t/\ufffd"), BODY, InvalidEvent, "not printable ASCII"),
    "control character": (ce_headers(source="/t\x00"), BODY, InvalidEvent, "not printable ASCII"),
    "encoded control character": (ce_headers(source="/t%0Ax"), BODY, InvalidEvent, "control character"),
    "overlong utf-8": (ce_headers(source="/t%C0%A0"), BODY, InvalidEvent, "not UTF-8"),
    "lone percent": (ce_headers(source="/t%zz"), BODY, InvalidEvent, "two hexadecimal digits"),
    "huge header value": (ce_headers(source="x" * 5000), BODY, EventTooLarge, "with its ce- headers, over the 4096"),
    "huge id": (ce_headers(id="a" * 300), BODY, InvalidEvent, "id: String should have at most 200 characters"),
}


@pytest.mark.parametrize(("headers", "body", "kind", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_a_binary_mode_event_is_refused_naming_its_problem(
    headers: dict[str, str], body: bytes, kind: type[EventError], reason: str
) -> None:
    with pytest.raises(kind) as refused:
        parse_envelope(body, max_bytes=MAX_BYTES, headers=headers)
    assert reason in refused.value.reason
    assert len(refused.value.reason) < 1000


# At the bridge


def queue() -> str:
    return f"binary-{uuid.uuid4()}"  # nobody polls it: the runs start and wait, which is all these tests need


async def publish_binary(nc: NATS, headers: dict[str, str], body: bytes, subject: str = PIPELINE_SUBJECT) -> int:
    ack = await nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": str(uuid.uuid4()), **headers})
    return int(ack.seq)


async def started_input(client: Client, workflow_id: str) -> Any:
    """The input the run ``workflow_id`` was started with, as JSON."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    return pydantic_data_converter.payload_converter.from_payloads(list(started.input.payloads))[0]


async def test_a_binary_mode_pipeline_request_starts_its_run_like_a_structured_one(nc: NATS, client: Client) -> None:
    structured = pipeline_event(**DATA)
    binary_id = f"binary-{uuid.uuid4()}"
    await publish(nc, structured)
    await publish_binary(nc, ce_headers(binary_id), BODY)
    bridge = RecordingBridge(nc, client, bridge_config(queue()))
    async with bridge_running(bridge):
        await wait_until(lambda: settled(nc), what="both settled")
    assert [(m.headers or {}).get(REASON_HEADER) for m in await dead_letters(nc)] == []
    assert [outcome for _, outcome in bridge.outcomes] == [Outcome.STARTED, Outcome.STARTED]
    runs = {
        name: client.get_workflow_handle(f"pipeline-{event_id}")
        for name, event_id in (("structured", structured.id), ("binary", binary_id))
    }
    for handle in runs.values():
        description = await handle.describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
        assert description.workflow_type == "DevSecOpsPipelineWorkflow"
    assert await started_input(client, f"pipeline-{binary_id}") == await started_input(
        client, f"pipeline-{structured.id}"
    )


BAD_AT_THE_BRIDGE: dict[str, tuple[dict[str, str], bytes, str]] = {
    "type of another subject": (
        ce_headers(type="quantum.code.requested"),
        json.dumps({"project": "p", "prompt": "a slugify helper", "requested_by": "alice"}).encode(),
        "WrongSubject: an event of type quantum.code.requested travels on quantum.events.code.requested",
    ),
    "no ce-id": (ce_headers(id=None), BODY, "InvalidEvent: id: Field required"),
    "not json": (ce_headers(datacontenttype="application/xml"), b"<a/>", "binary mode carries JSON data only"),
    "duplicate headers": ({**ce_headers(), "Ce-Type": "quantum.review.submitted"}, BODY, "both give the attribute"),
    "non-ascii header": (
        ce_headers(source="/ｑｕａｎｔｕｍ"),
        BODY,
        "InvalidEvent: header ce-source: not printable ASCII",
    ),
    "huge header": (ce_headers(source="y" * 60_000), BODY, "EventTooLarge: binary-mode event is"),
    "only headers": (ce_headers(), b"", "MalformedEvent: the body (a binary-mode event's data) is not JSON"),
}


async def test_bad_binary_mode_events_are_dead_lettered_naming_the_problem(nc: NATS, client: Client) -> None:
    bridge = RecordingBridge(nc, client, bridge_config(queue(), max_event_bytes=MAX_BYTES))
    sequences = {}
    for name, (headers, body, _) in BAD_AT_THE_BRIDGE.items():
        sequences[await publish_binary(nc, headers, body)] = name
    good = f"good-{uuid.uuid4()}"
    sequences[await publish_binary(nc, ce_headers(good), BODY)] = "good"
    async with bridge_running(bridge):
        await wait_until(lambda: settled(nc), what="all settled")

    letters = await dead_letters(nc)
    reasons = {
        sequences[int((m.headers or {})[ORIGINAL_SEQUENCE_HEADER])]: (m.headers or {})[REASON_HEADER] for m in letters
    }
    assert "good" not in reasons, reasons["good"]
    for name, (_, _, reason) in BAD_AT_THE_BRIDGE.items():
        assert reason in reasons[name], f"{name}: {reasons[name]!r}"
    assert set(reasons) == set(BAD_AT_THE_BRIDGE)
    status = (await client.get_workflow_handle(f"pipeline-{good}").describe()).status
    assert status == WorkflowExecutionStatus.RUNNING  # the bridge went on after them
