"""The ``quantum`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import nats
import typer
from nats.aio.client import Client as NATS
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.prompt import Confirm, Prompt
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from events.envelope import EventError, new_event, parse_envelope
from events.models import PipelineRequest, ReviewDecision
from events.schemas import catalogue, write_schemas
from events.streams import DLQ_STREAM, EVENTS_STREAM, ensure_streams
from quantum.app import bridge_running, running, wait_for_stop_signal
from quantum.bench import bench_events
from quantum.bus import BusError, dead_letters, publish_event, replay_dead_letter, tail
from quantum.client import connect
from quantum.metrics import MetricsError
from quantum.requests import EXAMPLES, RequestError, describe_validation_error, load_model
from quantum.settings import Settings
from quantum.stack import StackError
from quantum.views import result_panel, runs_table, status_panel, summary
from workflows.models import RunStatusView

T = TypeVar("T")

app = typer.Typer(help="Quantum Suite: a DevSecOps saga orchestrator on Temporal and NATS.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Request, follow, list and cancel pipeline runs.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
events_app = typer.Typer(help="Publish, follow and describe the domain events on the bus.", no_args_is_help=True)
app.add_typer(events_app, name="events")
bench_app = typer.Typer(help="Benchmarks, reported as ratios against a baseline of the same run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
dlq_app = typer.Typer(help="Events the bridge could not use, kept with their reason.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

console = Console()
err_console = Console(stderr=True)

PIPELINE_WORKFLOW = "DevSecOpsPipelineWorkflow"
TERMINAL = {"succeeded", "failed", "rejected", "timed_out", "cancelled"}
EXAMPLE_REQUEST = EXAMPLES / "pipeline.json"
CLI_SOURCE = "quantum-cli"


class CliError(Exception):
    """A failure to report in one line, without a traceback."""


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def run(coro: Awaitable[T]) -> T:
    """Run ``coro``, turning the product's expected failures into a clear message and exit code 1."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except (CliError, StackError, MetricsError) as err:
        fail(str(err))


async def client_for(settings: Settings) -> Client:
    try:
        return await connect(settings)
    except RuntimeError as err:
        raise CliError(
            f"Temporal at {settings.temporal_address} does not answer ({err}); start the stack with `quantum up` "
            "or set QUANTUM_TEMPORAL_ADDRESS"
        ) from None


async def fetch_status(handle: WorkflowHandle[Any, Any]) -> RunStatusView:
    try:
        view: RunStatusView = await handle.query("status", result_type=RunStatusView)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no run with id {handle.id!r}") from None
        raise
    return view


async def request_pipeline(nc: NATS, settings: Settings, request: PipelineRequest) -> str:
    """Publish ``quantum.pipeline.requested``; the bridge starts the run ``pipeline-<event id>``."""
    event = new_event("quantum.pipeline.requested", request, source=CLI_SOURCE)
    try:
        await publish_event(nc, event, max_bytes=settings.max_event_bytes)
    except BusError as err:
        raise CliError(str(err)) from None
    return f"pipeline-{event.id}"


async def nats_for(settings: Settings) -> NATS:
    try:
        return await nats.connect(
            servers=[s.strip() for s in settings.nats_url.split(",")], connect_timeout=3, allow_reconnect=False
        )
    except Exception as err:  # nats raises several unrelated types for an unreachable server
        raise CliError(
            f"NATS at {settings.nats_url} does not answer ({err or type(err).__name__}); start the stack with "
            "`quantum up` or set QUANTUM_NATS_URL"
        ) from None


async def on_bus(settings: Settings, action: Callable[[NATS], Awaitable[T]]) -> T:
    """Connect to NATS, do ``action``, disconnect; a :class:`BusError` becomes a one-line CLI error."""
    nc = await nats_for(settings)
    try:
        return await action(nc)
    except BusError as err:
        raise CliError(str(err)) from None
    finally:
        await nc.close()


async def wait_for_run(handle: WorkflowHandle[Any, Any], timeout: float = 60) -> None:
    """Wait until the bridge has started the run behind ``handle``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await handle.describe()
            return
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise CliError(
                f"no run {handle.id} after {timeout:g} s: is the bridge running (`quantum up` or `quantum bridge`)?"
            )
        await asyncio.sleep(0.2)


GateHandler = Callable[[WorkflowHandle[Any, Any], RunStatusView], Awaitable[None]]


async def follow(handle: WorkflowHandle[Any, Any], *, on_gate: GateHandler | None = None) -> RunStatusView:
    """Show a live stage table until the run ends; ``on_gate`` is called once for each gate that opens."""
    handled: set[str] = set()
    view = await fetch_status(handle)
    with Live(status_panel(view), console=console, refresh_per_second=4, transient=False) as live:
        while view.status not in TERMINAL:
            if view.pending_gate and on_gate and view.pending_gate not in handled:
                handled.add(view.pending_gate)
                live.stop()
                await on_gate(handle, view)
                live.start()
            await asyncio.sleep(0.25)
            view = await fetch_status(handle)
            live.update(status_panel(view))
    return view


def auto_approver(request: PipelineRequest) -> GateHandler:
    """Approve each gate with as many of the policy's reviewers as its quorum needs."""

    async def approve(handle: WorkflowHandle[Any, Any], view: RunStatusView) -> None:
        gate = view.pending_gate or ""
        reviewers = request.approval_policy.reviewers or ["auto-approver"]
        for reviewer in reviewers[: request.approval_policy.approvals_for(gate)]:
            console.print(f"[yellow]gate '{gate}'[/]: approved automatically as {reviewer}")
            await handle.signal(
                "review", ReviewDecision(gate=gate, reviewer=reviewer, approved=True, comment="--auto-approve")
            )

    return approve


def person_at_the_gate(request: PipelineRequest) -> GateHandler:
    """Ask the person at the terminal to approve or reject each gate."""

    async def ask(handle: WorkflowHandle[Any, Any], view: RunStatusView) -> None:
        gate = view.pending_gate or ""
        reason = view.outputs.get(f"{gate}_gate_reason", "")
        console.print(f"\n[bold yellow]Gate '{gate}' waits for a review[/] ({reason})")
        reviewers = request.approval_policy.reviewers
        needed = request.approval_policy.approvals_for(gate)
        for index in range(needed):
            default = reviewers[index] if index < len(reviewers) else None
            # asked in a thread: the worker in this process keeps running while the person thinks
            reviewer = await asyncio.to_thread(Prompt.ask, "reviewer", default=default, console=console)
            approved = await asyncio.to_thread(Confirm.ask, f"approve gate '{gate}'?", console=console)
            comment = await asyncio.to_thread(Prompt.ask, "comment", default="", console=console)
            await handle.signal(
                "review", ReviewDecision(gate=gate, reviewer=reviewer, approved=approved, comment=comment)
            )
            if not approved:
                break

    return ask


# --- commands ------------------------------------------------------------------------------------------------------


@app.command()
def up() -> None:
    """Start the embedded stack (Temporal, NATS) where nothing answers, the worker and metrics; Ctrl-C stops all."""
    settings = Settings()

    async def serve() -> None:
        async with running(settings, say=lambda line: console.print(f"[dim]{line}[/]")) as live:
            table = Table(title="Quantum Suite is up", title_justify="left", show_header=False)
            table.add_column(style="bold")
            table.add_column()
            table.add_row("Temporal", f"{live.stack.temporal_address} (namespace {settings.temporal_namespace})")
            if live.stack.temporal_ui_url:
                table.add_row("Temporal UI", live.stack.temporal_ui_url)
            table.add_row("NATS", live.stack.nats_url)
            table.add_row("metrics", live.metrics_url or "off")
            table.add_row("task queue", settings.task_queue)
            table.add_row("started here", ", ".join(live.stack.started) or "nothing (using what was running)")
            table.add_row("data", str(settings.data_path))
            console.print(table)
            console.print("Press Ctrl-C to stop.")
            await wait_for_stop_signal()
            console.print("stopping…")

    run(serve())


@app.command()
def demo(
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Approve every gate without asking.")] = False,
    request_file: Annotated[Path, typer.Option("--request", help="The request to run.")] = EXAMPLE_REQUEST,
) -> None:
    """Run the example pipeline end to end on the embedded stack, with a live stage table."""
    settings = Settings()
    request = load_request(request_file)
    if not auto_approve and not sys.stdin.isatty():
        fail("no terminal to ask at the gates; pass --auto-approve", 2)

    async def go() -> RunStatusView:
        async with running(settings, with_metrics=False, say=lambda line: console.print(f"[dim]{line}[/]")) as live:
            run_id = await request_pipeline(live.nc, settings, request)
            handle = live.client.get_workflow_handle(run_id)
            console.print(f"requested [bold]{run_id}[/] for project {request.project} ({request.environment})")
            await wait_for_run(handle)
            on_gate = auto_approver(request) if auto_approve else person_at_the_gate(request)
            view = await follow(handle, on_gate=on_gate)
            console.print(summary(view, live.stack.temporal_ui_url, settings.temporal_namespace))
            if "deployment_url" in view.outputs and view.status == "succeeded":
                console.print(f"The release answered at {view.outputs['deployment_url']}; it stops when the demo ends.")
            return view

    view = run(go())
    if view.status != "succeeded":
        raise typer.Exit(1)


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
        fail("give either a request FILE or --prompt, not both or neither", 2)
    if file is not None:
        request = load_request(file)
    else:
        try:
            request = PipelineRequest(
                project=project, prompt=prompt, requested_by=requested_by or getpass.getuser(), environment=environment
            )
        except ValidationError as err:
            fail(f"the request is not valid:\n{describe_validation_error(err)}")
    settings = Settings()

    async def go() -> RunStatusView | None:
        run_id = await on_bus(settings, lambda nc: request_pipeline(nc, settings, request))
        console.print(
            f"requested [bold]{run_id}[/] (event quantum.pipeline.requested {run_id.removeprefix('pipeline-')})"
        )
        if not wait:
            return None
        client = await client_for(settings)
        handle = client.get_workflow_handle(run_id)
        await wait_for_run(handle)
        console.print(f"review gates with: quantum review {handle.id} --gate GATE --approve --reviewer NAME")
        return await follow(handle)

    view = run(go())
    if view is not None:
        console.print(summary(view, settings.temporal_ui_url, settings.temporal_namespace))
        if view.status != "succeeded":
            raise typer.Exit(1)


def load_request(file: Path) -> PipelineRequest:
    try:
        request: PipelineRequest = load_model(file, PipelineRequest)
    except RequestError as err:
        fail(str(err))
    return request


@pipeline_app.command("status")
def pipeline_status(
    pipeline_id: Annotated[str, typer.Argument(help="The workflow id, e.g. pipeline-<event id>.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status query's JSON.")] = False,
) -> None:
    """Show a run's stages, gates, compensations and reviews."""
    settings = Settings()

    async def go() -> RunStatusView:
        client = await client_for(settings)
        return await fetch_status(client.get_workflow_handle(pipeline_id))

    view = run(go())
    if as_json:
        console.print_json(view.model_dump_json())
    else:
        console.print(result_panel(view, settings.temporal_ui_url, settings.temporal_namespace))


@pipeline_app.command("list")
def pipeline_list(limit: Annotated[int, typer.Option(help="How many runs to show.")] = 20) -> None:
    """List recent runs of every workflow type."""
    settings = Settings()

    async def go() -> list[tuple[str, str, str, str]]:
        client = await client_for(settings)
        rows = []
        async for wf in client.list_workflows(limit=limit):
            state = wf.status.name.lower() if wf.status else "unknown"
            rows.append((wf.id, wf.workflow_type, state, wf.start_time.strftime("%Y-%m-%d %H:%M:%S")))
        return rows

    console.print(runs_table(run(go())))


@pipeline_app.command("cancel")
def pipeline_cancel(pipeline_id: Annotated[str, typer.Argument(help="The workflow id.")]) -> None:
    """Cancel a run: its compensations run and it ends ``cancelled``."""
    settings = Settings()

    async def go() -> RunStatusView:
        client = await client_for(settings)
        handle = client.get_workflow_handle(pipeline_id)
        desc = await _describe(handle)
        if desc != WorkflowExecutionStatus.RUNNING:
            raise CliError(f"{pipeline_id} is not running ({desc.name.lower() if desc else 'unknown'})")
        await handle.cancel()
        console.print(f"cancellation of {pipeline_id} requested; compensating…")
        return await follow(handle)

    view = run(go())
    console.print(summary(view, settings.temporal_ui_url, settings.temporal_namespace))


async def _describe(handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionStatus | None:
    try:
        return (await handle.describe()).status
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no run with id {handle.id!r}") from None
        raise


@app.command()
def review(
    pipeline_id: Annotated[str, typer.Argument(help="The workflow id.")],
    gate: Annotated[str, typer.Option(help="security, infra or deploy.")],
    reviewer: Annotated[str, typer.Option(help="Your name, as the approval policy lists it.")],
    approve: Annotated[bool | None, typer.Option("--approve/--reject", help="Your decision.")] = None,
    comment: Annotated[str, typer.Option(help="Why.")] = "",
) -> None:
    """Approve or reject a gate; says whether the run accepted the review, and why not."""
    if approve is None:
        fail("say --approve or --reject", 2)
    settings = Settings()
    decision = ReviewDecision(gate=gate, reviewer=reviewer, approved=approve, comment=comment)

    async def go() -> tuple[bool, str]:
        client = await client_for(settings)
        handle = client.get_workflow_handle(pipeline_id)
        before = len((await fetch_status(handle)).audit)
        await handle.signal("review", decision)
        for _ in range(100):
            view = await fetch_status(handle)
            if len(view.audit) > before:
                entry = view.audit[before]
                return entry.accepted, entry.reason
            await asyncio.sleep(0.1)
        raise CliError("the review was sent but the run has not recorded it yet; check `quantum pipeline status`")

    accepted, reason = run(go())
    if accepted:
        console.print(f"[green]accepted[/]: {'approved' if approve else 'rejected'} gate '{gate}' of {pipeline_id}")
    else:
        err_console.print(f"[bold red]refused[/]: {escape(reason)}", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def bridge() -> None:
    """Run only the inbound bridge (scale it apart from the worker); Ctrl-C stops it."""
    settings = Settings()

    async def serve() -> None:
        client = await client_for(settings)
        nc = await nats_for(settings)
        try:
            await ensure_streams(nc.jetstream(), settings.stream_limits())
            async with bridge_running(nc, client, settings):
                console.print(
                    f"bridge consuming {EVENTS_STREAM} on {settings.nats_url} into {settings.temporal_address}"
                )
                await wait_for_stop_signal()
        finally:
            await nc.close()

    run(serve())


@events_app.command("publish")
def events_publish(file: Annotated[Path, typer.Argument(help="A CloudEvent, JSON structured mode.")]) -> None:
    """Publish a CloudEvent from a file, after the checks the bridge will make."""
    settings = Settings()
    try:
        event = parse_envelope(file.read_bytes(), max_bytes=settings.max_event_bytes)
    except OSError as err:
        fail(f"cannot read {file}: {err.strerror}")
    except EventError as err:
        fail(f"{file}: {err.kind}: {err.reason}")

    sequence = run(on_bus(settings, lambda nc: publish_event(nc, event, max_bytes=settings.max_event_bytes)))
    console.print(f"published {event.type} {event.id} on {event.nats_subject} (stream sequence {sequence})")


@events_app.command("tail")
def events_tail(
    event_type: Annotated[str | None, typer.Option("--type", help="Only this type, e.g. quantum.stage.failed.")] = None,
    from_start: Annotated[
        bool, typer.Option("--all", help="From the start of the stream, not only new events.")
    ] = False,
    limit: Annotated[int, typer.Option(help="Stop after this many events (0: until Ctrl-C).")] = 0,
) -> None:
    """Show events as they arrive, one line each."""
    settings = Settings()

    async def go() -> None:
        nc = await nats_for(settings)
        seen = 0
        try:
            async for event in tail(nc, event_type=event_type, from_start=from_start):
                data = event.get("data") or {}
                detail = data.get("stage") or data.get("step") or data.get("gate") or data.get("status") or ""
                when = str(event.get("time", ""))[11:23]
                pipeline = data.get("pipeline_id") or data.get("project") or ""
                console.print(f"{when}  {event.get('type', '?'):<34} {pipeline:<46} {detail}", soft_wrap=True)
                seen += 1
                if limit and seen >= limit:
                    return
        finally:
            await nc.close()

    with contextlib.suppress(KeyboardInterrupt):
        run(go())


@events_app.command("schema")
def events_schema(
    out: Annotated[Path, typer.Option(help="Where to write the JSON Schemas.")] = Path("docs/events"),
    catalogue_file: Annotated[Path, typer.Option("--catalogue", help="Where to write the catalogue.")] = Path(
        "docs/events.md"
    ),
) -> None:
    """Export the JSON Schema of every event type and the Markdown catalogue."""
    written = write_schemas(out)
    catalogue_file.parent.mkdir(parents=True, exist_ok=True)
    catalogue_file.write_text(catalogue())
    console.print(f"wrote {len(written)} schemas to {out} and the catalogue to {catalogue_file}")


@dlq_app.command("list")
def dlq_list() -> None:
    """The dead letters, with the reason each was refused."""
    settings = Settings()

    letters = run(on_bus(settings, dead_letters))
    table = Table(title=f"{DLQ_STREAM}: {len(letters)} dead letters", title_justify="left")
    for column in ("seq", "time", "from subject", "bytes", "reason"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        when = letter.time.strftime("%Y-%m-%d %H:%M:%S") if letter.time else ""
        table.add_row(str(letter.sequence), when, letter.subject, str(len(letter.data)), letter.reason)
    console.print(table)


@dlq_app.command("replay")
def dlq_replay(
    sequence: Annotated[int, typer.Argument(help="The dead letter's sequence (see `quantum dlq list`).")],
) -> None:
    """Publish a dead letter again on its original subject (after its cause is fixed), and drop it from the DLQ."""
    settings = Settings()

    subject = run(on_bus(settings, lambda nc: replay_dead_letter(nc, sequence)))
    console.print(f"replayed dead letter {sequence} on {subject}")


@bench_app.command("events")
def bench_events_command(
    events: Annotated[int, typer.Option(help="Events (and raw starts) for the throughput comparison.")] = 300,
    rate: Annotated[float, typer.Option(help="Steady rate for the latency measurement, events/s.")] = 100.0,
    seconds: Annotated[float, typer.Option(help="How long the steady rate lasts.")] = 10.0,
) -> None:
    """Events started per second through the bridge against raw start_workflow, and publish-to-start latency."""
    with console.status(f"benchmarking on a fresh embedded stack: {events} events, then {rate:g}/s for {seconds:g} s"):
        report = run(bench_events(events=events, rate=rate, seconds=seconds))
    table = Table(title="quantum bench events", title_justify="left")
    for column in ("measure", "value", "ratio to baseline"):
        table.add_column(column)
    for row in report.rows():
        table.add_row(*row)
    console.print(table)
    console.print(
        f"{report.started} runs started; {report.latency_samples} latency samples; " + "; ".join(report.notes)
    )


def main() -> None:
    """Console entry point; leaves without interpreter teardown (temporalio/sdk-python#300)."""
    logging.basicConfig(
        level=os.environ.get("QUANTUM_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    code = 0
    try:
        result = app(standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exit_:
        code = exit_.exit_code
    except typer.Abort:
        err_console.print("aborted")
        code = 130
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except Exception as err:  # click usage errors and the like
        from click.exceptions import ClickException

        if isinstance(err, ClickException):
            err.show()
            code = err.exit_code
        else:
            raise
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
