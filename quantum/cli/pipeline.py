"""``quantum pipeline request|status|show|list|cancel``."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from nats.aio.client import Client as NATS
from pydantic import ValidationError
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from events.envelope import new_event
from events.models import PipelineRequest
from quantum.bus import BusError, publish_event
from quantum.cli.apps import pipeline_app
from quantum.cli.connect import client_for, load_settings, on_bus
from quantum.cli.errors import USAGE, CliError, run
from quantum.cli.output import console, fail, fail_listing, say
from quantum.cli.params import RunId, describe_options
from quantum.cli.runs import ending, fetch_status, follow, has_ended, temporal_status, wait_for_run
from quantum.findings import FindingsUnavailable, findings_table, read_findings, sarif_path
from quantum.requests import RequestError, load_model
from quantum.settings import Settings
from quantum.views import audit_table, plain, result_panel, reviewer_brief, runs_table, summary
from workflows.models import RunStatusView

CLI_SOURCE = "quantum-cli"
REQUEST_OPTIONS = {
    "project": "--project",
    "prompt": "--prompt",
    "requested_by": "--requested-by",
    "environment": "--environment",
}


async def request_pipeline(nc: NATS, settings: Settings, request: PipelineRequest) -> str:
    """Publish ``quantum.pipeline.requested``; the bridge starts the run ``pipeline-<event id>``."""
    event = new_event("quantum.pipeline.requested", request, source=CLI_SOURCE)
    try:
        await publish_event(nc, event, max_bytes=settings.max_event_bytes)
    except BusError as err:
        raise CliError(str(err)) from None
    return f"pipeline-{event.id}"


def who_asks() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment nor in the password database
        fail("cannot tell who you are: say it with --requested-by", USAGE)


def load_request(file: Path) -> PipelineRequest:
    """The request in ``file``; one that cannot be read or is not valid ends the command, naming each problem."""
    try:
        request: PipelineRequest = load_model(file, PipelineRequest)
    except RequestError as err:
        fail_listing(str(err))
    return request


@pipeline_app.command("request")
def pipeline_request(
    file: Annotated[Path | None, typer.Argument(help="A request file (JSON or YAML).")] = None,
    prompt: Annotated[str | None, typer.Option(help="What to build, instead of a file.")] = None,
    project: Annotated[str, typer.Option(help="Project name (with --prompt).")] = "quantum-app",
    requested_by: Annotated[str | None, typer.Option(help="Who asks (default: your user name).")] = None,
    environment: Annotated[str, typer.Option(help="dev, staging or prod (with --prompt).")] = "dev",
    wait: Annotated[bool, typer.Option("--follow/--no-follow", help="Follow the run with a live table.")] = True,
) -> None:
    """Request a pipeline run from a file or a prompt."""
    if (file is None) == (prompt is None):
        fail("give either a request FILE or --prompt, not both or neither", USAGE)
    if file is not None:
        request = load_request(file)
    else:
        try:
            request = PipelineRequest(
                project=project,
                prompt=prompt,
                requested_by=who_asks() if requested_by is None else requested_by,
                environment=environment,
            )
        except ValidationError as err:
            fail(describe_options(err, REQUEST_OPTIONS), USAGE)
    settings = load_settings()

    async def go() -> RunStatusView | None:
        run_id = await on_bus(settings, lambda nc: request_pipeline(nc, settings, request))
        event_id = run_id.removeprefix("pipeline-")
        say("requested ", plain(run_id, style="bold"), f" (event quantum.pipeline.requested {event_id})")
        if not wait:
            return None
        client = await client_for(settings)
        handle = client.get_workflow_handle(run_id)
        await wait_for_run(handle)
        say("review gates with: quantum review ", plain(run_id), " --gate GATE --approve --reviewer NAME")
        return await follow(handle)

    view = run(go(), settings)
    if view is not None:
        console.print(summary(view, settings.temporal_ui_url, settings.temporal_namespace))
        if view.status != "succeeded":
            raise typer.Exit(1)


@pipeline_app.command("status")
def pipeline_status(
    pipeline_id: RunId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status query's JSON.")] = False,
) -> None:
    """Show a run's stages, gates, compensations and reviews."""
    settings = load_settings()

    async def go() -> RunStatusView:
        client = await client_for(settings)
        return await fetch_status(client.get_workflow_handle(pipeline_id))

    view = run(go(), settings)
    if as_json:
        console.print_json(view.model_dump_json())
    else:
        console.print(result_panel(view, settings.temporal_ui_url, settings.temporal_namespace))


@pipeline_app.command("show")
def pipeline_show(
    pipeline_id: RunId,
    findings: Annotated[
        bool, typer.Option("--findings", help="Also list the security findings (from the run's SARIF report).")
    ] = False,
    reviews: Annotated[
        bool, typer.Option("--reviews/--no-reviews", help="List the reviews the run received so far.")
    ] = True,
) -> None:
    """Show what a reviewer needs: the run's status, test results, findings, infra plan, digests and earlier
    reviews; with --findings, each security finding (new, unchanged, fixed)."""
    settings = load_settings()

    async def go() -> RunStatusView:
        client = await client_for(settings)
        return await fetch_status(client.get_workflow_handle(pipeline_id))

    view = run(go(), settings)
    without_reviews = view.model_copy(update={"audit": [], "audit_dropped": 0})  # shown in a section of their own
    console.print(result_panel(without_reviews, settings.temporal_ui_url, settings.temporal_namespace))
    console.print(reviewer_brief(view))
    if reviews:
        if view.audit:
            console.print(audit_table(view))
        if view.audit_dropped:
            say(f"{view.audit_dropped} earlier refused reviews are not shown")
        if not view.audit and not view.audit_dropped:
            say("no reviews yet")
    if findings:
        path = sarif_path(settings.data_path, pipeline_id)
        try:
            rows = read_findings(path)
        except FindingsUnavailable as err:
            fail(str(err))
        console.print(findings_table(rows))
        say("SARIF report: ", plain(path, one_line=True))


@pipeline_app.command("list")
def pipeline_list(limit: Annotated[int, typer.Option(help="How many runs to show.", min=1)] = 20) -> None:
    """List recent runs of every workflow type."""
    settings = load_settings()

    async def go() -> list[tuple[str, str, str, str]]:
        client = await client_for(settings)
        rows = []
        async for wf in client.list_workflows(limit=limit):
            state = wf.status.name.lower() if wf.status else "unknown"
            rows.append((wf.id, wf.workflow_type, state, wf.start_time.strftime("%Y-%m-%d %H:%M:%S")))
        return rows

    console.print(runs_table(run(go(), settings)))


@pipeline_app.command("cancel")
def pipeline_cancel(pipeline_id: RunId) -> None:
    """Cancel a run: its compensations run and it ends ``cancelled``."""
    settings = load_settings()

    async def go() -> RunStatusView:
        client = await client_for(settings)
        handle = client.get_workflow_handle(pipeline_id)
        status = await temporal_status(handle)
        if status != WorkflowExecutionStatus.RUNNING:
            raise has_ended(pipeline_id, await ending(handle, status), "there is nothing to cancel")
        try:
            await handle.cancel()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            raise has_ended(pipeline_id, await ending(handle), "there is nothing to cancel") from None
        say("cancellation of ", plain(pipeline_id, one_line=True), " requested; compensating…")
        return await follow(handle)

    view = run(go(), settings)
    console.print(summary(view, settings.temporal_ui_url, settings.temporal_namespace))
