"""The envelope, the catalogue and the published schemas agree with the code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events.catalog import ALL, INBOUND, OUTBOUND
from events.envelope import (
    EventTooLarge,
    InvalidEvent,
    MalformedEvent,
    WrongSpecVersion,
    new_event,
    parse_envelope,
    subject_for,
)
from events.schemas import catalogue, schemas

DOCS = Path(__file__).parent.parent.parent / "docs"


def test_the_contract_event_types_are_all_there() -> None:
    assert set(INBOUND) == {
        "quantum.pipeline.requested",
        "quantum.code.requested",
        "quantum.infra.requested",
        "quantum.review.submitted",
        "quantum.pipeline.cancel_requested",
    }
    assert set(OUTBOUND) == {
        "quantum.pipeline.started",
        "quantum.stage.completed",
        "quantum.stage.failed",
        "quantum.review.requested",
        "quantum.review.reminder",
        "quantum.review.escalated",
        "quantum.compensation.completed",
        "quantum.pipeline.completed",
        "quantum.pipeline.failed",
    }
    assert subject_for("quantum.pipeline.requested") == "quantum.events.pipeline.requested"


def test_committed_schemas_and_catalogue_match_the_code() -> None:
    for file_name, schema in schemas().items():
        committed = json.loads((DOCS / "events" / file_name).read_text())
        assert committed == json.loads(json.dumps(schema)), f"docs/events/{file_name} is stale: quantum events schema"
    assert (DOCS / "events.md").read_text() == catalogue(), "docs/events.md is stale: run quantum events schema"
    assert len(schemas()) == len(ALL) + 1


def test_an_event_round_trips_through_the_envelope() -> None:
    event = new_event(
        "quantum.pipeline.requested", {"project": "p", "prompt": "x y z", "requested_by": "a"}, source="t"
    )
    parsed = parse_envelope(event.to_bytes(), max_bytes=10_000)
    assert parsed.id == event.id and parsed.data == event.data and parsed.specversion == "1.0"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json", MalformedEvent),
        (b"[1, 2]", MalformedEvent),
        (b'{"specversion": "0.3"}', WrongSpecVersion),
        (b'{"specversion": "1.0", "id": "x", "source": "s", "type": "nope"}', InvalidEvent),
        (
            b'{"specversion": "1.0", "id": "x", "source": "s", "type": "quantum.a.b", "datacontenttype": "text/xml"}',
            InvalidEvent,
        ),
        (b"{" + b" " * 300 + b"}", EventTooLarge),
    ],
)
def test_bad_envelopes_are_named(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_envelope(raw, max_bytes=150)
