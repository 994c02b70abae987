"""``quantum events publish|tail|schema`` and ``quantum dlq list|replay``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from nats.aio.client import Client as NATS

from events.envelope import EventError, parse_envelope
from events.schemas import catalogue, write_schemas
from events.streams import DLQ_STREAM
from quantum.bus import DEFAULT_PAGE, dead_letters, publish_event, replay_dead_letter, tail
from quantum.cli.apps import dlq_app, events_app
from quantum.cli.connect import load_settings, on_bus
from quantum.cli.errors import run
from quantum.cli.output import console, fail, say
from quantum.cli.params import check_event_type
from quantum.views import dead_letters_table, event_line, plain


@events_app.command("publish")
def events_publish(file: Annotated[Path, typer.Argument(help="A CloudEvent, JSON structured mode.")]) -> None:
    """Publish a CloudEvent from a file, after the checks the bridge will make."""
    settings = load_settings()
    try:
        event = parse_envelope(file.read_bytes(), max_bytes=settings.max_event_bytes)
    except OSError as err:
        fail(f"cannot read {file}: {err.strerror}")
    except EventError as err:
        fail(f"{file}: {err.kind}: {err.reason}")

    sequence = run(on_bus(settings, lambda nc: publish_event(nc, event, max_bytes=settings.max_event_bytes)), settings)
    say(
        "published ",
        plain(event.type, one_line=True),
        " ",
        plain(event.id, one_line=True),
        " on ",
        plain(event.nats_subject, one_line=True),
        f" (stream sequence {sequence})",
    )


@events_app.command("tail")
def events_tail(
    event_type: Annotated[
        str | None,
        typer.Option("--type", help="Only this type, e.g. quantum.stage.failed.", callback=check_event_type),
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--all", help="From the start of the stream, not only new events.")
    ] = False,
    limit: Annotated[int, typer.Option(help="Stop after this many events (0: until Ctrl-C).", min=0)] = 0,
) -> None:
    """Show events as they arrive, one line each."""
    settings = load_settings()

    async def show(nc: NATS) -> None:
        seen = 0
        # closed here, while the connection is open: its subscription is removed before the connection goes
        stream = tail(nc, event_type=event_type, from_start=from_start)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                console.print(event_line(event), soft_wrap=True)
                seen += 1
                if limit and seen >= limit:
                    return

    with contextlib.suppress(KeyboardInterrupt):
        run(on_bus(settings, show), settings)


@events_app.command("schema")
def events_schema(
    out: Annotated[Path, typer.Option(help="Where to write the JSON Schemas.")] = Path("docs/events"),
    catalogue_file: Annotated[Path, typer.Option("--catalogue", help="Where to write the catalogue.")] = Path(
        "docs/events.md"
    ),
) -> None:
    """Export the JSON Schema of every event type and the Markdown catalogue."""
    try:
        written = write_schemas(out)
        catalogue_file.parent.mkdir(parents=True, exist_ok=True)
        catalogue_file.write_text(catalogue())
    except OSError as err:
        fail(f"cannot write {err.filename or out}: {err.strerror or err}")
    say(f"wrote {len(written)} schemas to ", plain(out), " and the catalogue to ", plain(catalogue_file))


@dlq_app.command("list")
def dlq_list() -> None:
    """The dead letters, with the reason each was refused."""
    settings = load_settings()
    letters = run(on_bus(settings, lambda nc: dead_letters(nc, limit=DEFAULT_PAGE + 1)), settings)
    console.print(dead_letters_table(DLQ_STREAM, letters[:DEFAULT_PAGE], more=len(letters) > DEFAULT_PAGE))


@dlq_app.command("replay")
def dlq_replay(
    sequence: Annotated[
        int, typer.Argument(help="The dead letter's sequence (see `quantum dlq list`).", metavar="SEQUENCE", min=1)
    ],
) -> None:
    """Publish a dead letter again on its original subject (after its cause is fixed), and drop it from the DLQ."""
    settings = load_settings()
    subject = run(on_bus(settings, lambda nc: replay_dead_letter(nc, sequence)), settings)
    say(f"replayed dead letter {sequence} on ", plain(subject, one_line=True))
