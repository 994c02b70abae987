"""``quantum audit verify``: recompute the review audit trail's hashes and links, and say what is wrong."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowExecutionDescription
from temporalio.service import RPCError, RPCStatusCode

from agents.reviewers import KeyFileError, load_public_keys
from events.audit import AUDIT_STREAM
from events.models import normalise_identity
from quantum.audit import Keys, Problem, Verdict, check, compare_head, read_records
from quantum.audit_keys import audit_verify_keys
from quantum.cli.apps import audit_app
from quantum.cli.connect import client_for, load_settings, on_bus
from quantum.cli.errors import CliError, explain, namespace_missing, run
from quantum.cli.output import console, say
from quantum.cli.params import check_run_id
from quantum.cli.runs import fetch_status
from quantum.settings import Settings
from quantum.views import plain
from workflows.reviews import AUDIT_MEMO

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
    for column in ("run", "execution", "records", "first seq", "last seq", "head"):
        table.add_column(column, overflow="fold")
    for chain in sorted(verdict.runs, key=lambda c: c.first_sequence):
        table.add_row(
            plain(chain.run_id, one_line=True),
            plain(chain.execution[:13] or "-", one_line=True),
            str(chain.records),
            str(chain.first_sequence),
            str(chain.last_sequence),
            plain(chain.head[:16]),
        )
    return table


def verify_keys(settings: Settings) -> Keys:
    """The workers' audit keys and the reviewers' keys this deployment has, as the verifier trusts them."""
    try:
        audit = audit_verify_keys(settings)
        reviewers = load_public_keys(settings.reviewer_keys) if settings.reviewer_keys is not None else {}
    except KeyFileError as err:
        raise CliError(str(err)) from None
    return Keys(audit=audit, reviewers={normalise_identity(name): key for name, key in reviewers.items()})


async def _described(client: Client, run_id: str, execution: str = "") -> WorkflowExecutionDescription | None:
    """The run (the given execution of it, or its latest), or None when Temporal has no such run."""
    try:
        return await client.get_workflow_handle(run_id, run_id=execution or None).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND and not namespace_missing(err):
            return None
        raise


async def check_runs(settings: Settings, verdict: Verdict, pipeline_id: str | None) -> str | None:
    """Flag every chain with no run behind it, and check the asked run's chain against the run's own head.
    Returns the run's execution that was compared, or None."""
    client = await client_for(settings)
    for chain in verdict.runs:
        if await _described(client, chain.run_id, chain.execution) is None:
            gone = f" (execution {chain.execution[:36]})" if chain.execution else ""
            verdict.problems.append(
                Problem(
                    chain.run_id,
                    chain.first_sequence,
                    "orphan",
                    f"no run{gone} in Temporal is behind this chain: it never existed, or it is past the namespace's "
                    "retention",
                )
            )
    if pipeline_id is None:
        return None
    described = await _described(client, pipeline_id)
    if described is None:
        if not verdict.runs:
            raise CliError(f"no run {pipeline_id!r} in Temporal and no review records for it: check the id")
        return None
    execution = described.run_id if any(c.execution == described.run_id for c in verdict.runs) else ""
    kept = (await described.memo()).get(AUDIT_MEMO)
    if isinstance(kept, dict) and isinstance(kept.get("records"), int) and isinstance(kept.get("head"), str):
        execution = str(kept.get("execution") or "")
        compare_head(verdict, pipeline_id, records=kept["records"], head=kept["head"], execution=execution)
        return execution
    try:
        view = await fetch_status(client.get_workflow_handle(pipeline_id), timeout=QUERY_SECONDS)
    except Exception as err:  # no worker to answer: the chain alone is checked
        reason = str(err) if isinstance(err, CliError) else (explain(err, settings) or type(err).__name__)
        say(
            Text("the end of the chain was not checked against the run's own head: ", style="yellow"),
            plain(reason, one_line=True),
        )
        return execution
    compare_head(verdict, pipeline_id, records=view.audit_records, head=view.audit_head, execution=execution)
    return execution


@audit_app.command("verify")
def audit_verify(
    pipeline_id: Annotated[
        str | None, typer.Option("--pipeline", help="Only this run's chain.", callback=_check_optional_run_id)
    ] = None,
    stream_only: Annotated[
        bool,
        typer.Option(
            "--stream-only", help="Check the stream alone (hashes, links, signatures), not the runs in Temporal."
        ),
    ] = False,
) -> None:
    """Recompute every review record's hash, link and signature, and check each chain against its run in Temporal;
    exit 1 naming each changed, reordered, missing, forged, orphaned or truncated record.

    Example: quantum audit verify --pipeline pipeline-7f3c...
    """
    settings = load_settings()
    keys = verify_keys(settings)
    messages = run(on_bus(settings, lambda nc: read_records(nc, run_id=pipeline_id)), settings)
    verdict = check(messages, keys)
    if stream_only:
        say(Text("runs not asked (--stream-only): orphaned and truncated chains are not looked for", style="yellow"))
    else:
        run(check_runs(settings, verdict, pipeline_id), settings)
    if not keys.audit:
        say(
            Text("workers' signatures not checked: no audit key here (QUANTUM_AUDIT_VERIFY_KEYS)", style="yellow"),
        )
    if not verdict.intact:
        console.print(problems_table(verdict))
        raise typer.Exit(1)
    if not verdict.runs:
        say("no review records" + (" for " if pipeline_id else ""), plain(pipeline_id or "", one_line=True))
        return
    console.print(chains_table(verdict))
