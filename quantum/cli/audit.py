"""``quantum audit verify``: recompute the review audit trail's hashes and links, and say what is wrong."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from events.audit import AUDIT_STREAM
from quantum.audit import Verdict, check, compare_head, read_records
from quantum.cli.apps import audit_app
from quantum.cli.connect import client_for, load_settings, on_bus
from quantum.cli.errors import CliError, explain, run
from quantum.cli.output import console, say
from quantum.cli.params import check_run_id
from quantum.cli.runs import fetch_status
from quantum.settings import Settings
from quantum.views import plain
from workflows.models import RunStatusView

QUERY_SECONDS = 10.0


def _check_optional_run_id(value: str | None) -> str | None:
    return None if value is None else check_run_id(value)


def problems_table(verdict: Verdict) -> Table:
    table = Table(title=Text(f"{AUDIT_STREAM}: {len(verdict.problems)} problems"), title_justify="left")
    for column in ("run", "seq", "problem", "what is wrong"):
        table.add_column(column, overflow="fold")
    for problem in verdict.problems:
        table.add_row(
            plain(problem.run_id, one_line=True),
            str(problem.sequence),
            Text(problem.kind, style="bold red"),
            plain(problem.detail, one_line=True),
        )
    return table


def chains_table(verdict: Verdict) -> Table:
    title = f"{AUDIT_STREAM}: {verdict.records} records in {len(verdict.runs)} chains, all intact"
    table = Table(title=Text(title), title_justify="left")
    for column in ("run", "records", "first seq", "last seq", "head"):
        table.add_column(column, overflow="fold")
    for chain in sorted(verdict.runs, key=lambda c: c.first_sequence):
        table.add_row(
            plain(chain.run_id, one_line=True),
            str(chain.records),
            str(chain.first_sequence),
            str(chain.last_sequence),
            plain(chain.head[:16]),
        )
    return table


def compare_with_run(settings: Settings, verdict: Verdict, pipeline_id: str) -> None:
    """Check the chain's end against the run's own head; say so when the run cannot be asked."""

    async def go() -> RunStatusView:
        client = await client_for(settings)
        return await fetch_status(client.get_workflow_handle(pipeline_id), timeout=QUERY_SECONDS)

    try:
        view = asyncio.run(go())
    except Exception as err:  # a run Temporal no longer keeps, or no worker to answer: the chain alone is checked
        reason = str(err) if isinstance(err, CliError) else (explain(err, settings) or type(err).__name__)
        say(
            Text("the end of the chain was not checked against the run's own head: ", style="yellow"),
            plain(reason, one_line=True),
        )
        return
    compare_head(verdict, pipeline_id, records=view.audit_records, head=view.audit_head)


@audit_app.command("verify")
def audit_verify(
    pipeline_id: Annotated[
        str | None, typer.Option("--pipeline", help="Only this run's chain.", callback=_check_optional_run_id)
    ] = None,
) -> None:
    """Recompute every review record's hash and link; exit 1 naming each changed, reordered or missing record."""
    settings = load_settings()
    messages = run(on_bus(settings, lambda nc: read_records(nc, run_id=pipeline_id)), settings)
    verdict = check(messages)
    if pipeline_id is not None:
        compare_with_run(settings, verdict, pipeline_id)
    if not verdict.intact:
        console.print(problems_table(verdict))
        raise typer.Exit(1)
    if not verdict.runs:
        say("no review records" + (" for " if pipeline_id else ""), plain(pipeline_id or "", one_line=True))
        return
    console.print(chains_table(verdict))
