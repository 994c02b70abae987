"""``quantum up``, ``quantum demo`` and ``quantum bridge``: the commands that run parts of the product."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from nats.aio.client import Client as NATS
from rich.table import Table
from rich.text import Text

from agents.errors import without_secrets
from events.streams import EVENTS_STREAM, ensure_streams
from quantum.app import Running, bridge_running, connect_nats, metrics_served, running, wait_for_stop_signal
from quantum.cli.apps import app
from quantum.cli.connect import client_for, load_settings, nats_for
from quantum.cli.errors import USAGE, CliError, run
from quantum.cli.output import console, fail, say
from quantum.cli.pipeline import load_request, request_pipeline
from quantum.cli.review import auto_approver, person_at_the_gate
from quantum.cli.runs import follow, wait_for_run
from quantum.requests import EXAMPLES
from quantum.settings import Settings
from quantum.telemetry import telemetry
from quantum.views import plain, summary
from quantum.worker import build_agents, new_worker
from workflows.models import RunStatusView

EXAMPLE_REQUEST = EXAMPLES / "pipeline.json"


def progress(line: str) -> None:
    """How the embedded stack reports what it starts."""
    console.print(plain(line, style="dim"), soft_wrap=True)


DASHBOARDS = "helm/quantum/dashboards/*.json (import into Grafana: docs/operations.md)"


def add_observability_rows(table: Table, live: Running) -> None:
    """Where the metrics, the Prometheus and the dashboards are."""
    table.add_row("metrics", plain(live.metrics_url or "off"))
    table.add_row("Prometheus", plain(live.stack.prometheus_url or "not running"))
    table.add_row("dashboards", plain(DASHBOARDS))


@app.command()
def up() -> None:
    """Start the embedded stack (Temporal, NATS) where nothing answers, the worker and metrics; Ctrl-C stops all."""
    settings = load_settings()

    async def serve() -> None:
        async with running(settings, say=progress) as live:
            table = Table(title=Text("Quantum Suite is up"), title_justify="left", show_header=False)
            table.add_column(style="bold")
            table.add_column()
            table.add_row("Temporal", plain(f"{live.stack.temporal_address} (namespace {settings.temporal_namespace})"))
            if live.stack.temporal_ui_url:
                table.add_row("Temporal UI", plain(live.stack.temporal_ui_url))
            table.add_row("NATS", plain(without_secrets(live.stack.nats_url)))
            add_observability_rows(table, live)
            table.add_row("task queue", plain(settings.task_queue))
            table.add_row("started here", plain(", ".join(live.stack.started) or "nothing (using what was running)"))
            table.add_row("data", plain(settings.data_path))
            console.print(table)
            for note in live.stack.notes:
                say(Text(note, style="yellow"))
            say("Press Ctrl-C to stop.")
            await wait_for_stop_signal()
            say("stopping…")

    run(serve(), settings)


@app.command()
def demo(
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Approve every gate without asking.")] = False,
    request_file: Annotated[Path, typer.Option("--request", help="The request to run.")] = EXAMPLE_REQUEST,
) -> None:
    """Run the example pipeline end to end on the embedded stack, with a live stage table."""
    settings = load_settings()
    request = load_request(request_file)
    if not auto_approve and not sys.stdin.isatty():
        fail("no terminal to ask at the gates; pass --auto-approve", USAGE)

    async def go() -> RunStatusView:
        async with running(settings, metrics_optional=True, say=progress) as live:
            run_id = await request_pipeline(live.nc, settings, request)
            handle = live.client.get_workflow_handle(run_id)
            say(
                "requested ",
                plain(run_id, style="bold"),
                " for project ",
                plain(request.project),
                f" ({request.environment})",
            )
            await wait_for_run(handle)
            on_gate = auto_approver(request) if auto_approve else person_at_the_gate(request)
            view = await follow(handle, on_gate=on_gate)
            console.print(summary(view, live.stack.temporal_ui_url, settings.temporal_namespace))
            where = Table(show_header=False, box=None)
            where.add_column(style="bold")
            where.add_column()
            add_observability_rows(where, live)
            console.print(where)
            if "deployment_url" in view.outputs and view.status == "succeeded":
                url = plain(view.outputs["deployment_url"], one_line=True)
                say("The release answered at ", url, "; it stops when the demo ends.")
            return view

    view = run(go(), settings)
    if view.status != "succeeded":
        raise typer.Exit(1)


BUS_READY_SECONDS = 30.0


async def bus_ready(settings: Settings) -> NATS:
    """A NATS connection that reconnects after a server's restart, once JetStream has the streams: a cluster whose
    server just restarted, or whose leaders are being elected, is given :data:`BUS_READY_SECONDS`; an unreachable
    one is refused at once."""
    probe = await nats_for(settings)  # an unreachable server is one clear error, at once
    await probe.close()
    nc = await connect_nats(settings.nats_url, settings.nats_credentials)  # reconnects for as long as it runs
    deadline = asyncio.get_running_loop().time() + BUS_READY_SECONDS
    while True:
        try:
            await ensure_streams(nc.jetstream(timeout=5), settings.stream_limits())
            return nc
        except Exception as err:  # JetStream not ready yet: timeouts, no responders, a leader being elected
            if asyncio.get_running_loop().time() >= deadline:
                await nc.close()
                raise CliError(
                    f"NATS at {without_secrets(settings.nats_url)} answers but JetStream is not ready "
                    f"after {BUS_READY_SECONDS:g} s ({type(err).__name__}: {err})"
                ) from None
            await asyncio.sleep(1)


@app.command()
def worker() -> None:
    """Run only the worker (the workflows and every agent's activities) against the configured Temporal and NATS,
    starting nothing embedded; SIGTERM or Ctrl-C drains the running activities, then stops."""
    settings = load_settings()

    async def serve() -> None:
        client = await client_for(settings, runtime=telemetry().runtime)
        nc = await bus_ready(settings)
        await nc.close()
        agents = build_agents(settings)
        try:
            for run_id, action in agents.deploy.restore():
                say("release of ", plain(run_id), f": {action}")
            drain = timedelta(seconds=settings.worker_shutdown_seconds)
            with metrics_served(settings, "quantum-worker") as metrics_url:
                worker = new_worker(
                    client, agents.activities(), task_queue=settings.task_queue, graceful_shutdown_timeout=drain
                )
                async with worker:
                    say(
                        "worker on task queue ",
                        plain(settings.task_queue),
                        " of ",
                        plain(settings.temporal_address),
                        "; metrics on ",
                        plain(metrics_url or "off"),
                    )
                    await wait_for_stop_signal()
                    say(f"draining: running activities have {settings.worker_shutdown_seconds:g} s to finish")
        finally:
            await agents.close()
        say("worker stopped")

    run(serve(), settings)


@app.command()
def bridge() -> None:
    """Run only the inbound bridge (scale it apart from the worker); Ctrl-C stops it."""
    settings = load_settings()

    async def serve() -> None:
        client = await client_for(settings, runtime=telemetry().runtime)
        nc = await bus_ready(settings)
        try:
            with metrics_served(settings, "quantum-bridge") as metrics_url:
                async with bridge_running(nc, client, settings):
                    say(
                        f"bridge consuming {EVENTS_STREAM} on ",
                        plain(without_secrets(settings.nats_url)),
                        " into ",
                        plain(settings.temporal_address),
                        "; metrics on ",
                        plain(metrics_url or "off"),
                    )
                    await wait_for_stop_signal()
        finally:
            await nc.close()

    run(serve(), settings)
