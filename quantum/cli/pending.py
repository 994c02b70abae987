"""``quantum reviews pending``: every run waiting at a gate, since when, and how long the gate has left.

When the gate opened, its timeout and quorum come from the run's view (``gate_openings``). Runs from before the view
carried them are read from their history: the ``events.publish`` activity scheduled for the gate's
``quantum.review.requested`` event, whose input carries the timeout and quorum; a run that did not announce its gate
(recorded before outbound events) is shown from its start, with its request's approval policy.
Histories and inputs are data that anyone able to start a workflow wrote: each is bounded and checked before use.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowExecution
from temporalio.exceptions import TemporalError

from events.envelope import MalformedEvent, load_json
from events.models import DEFAULT_GATE_TIMEOUT_SECONDS
from quantum.cli.apps import reviews_app
from quantum.cli.connect import client_for, load_settings
from quantum.cli.errors import CliError, run
from quantum.cli.output import console, say
from quantum.cli.runs import fetch_status
from quantum.views import plain
from workflows.models import RunStatusView

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_HISTORY_EVENTS = 5000
QUERY_SECONDS = 5.0
CONCURRENCY = 32
"""Runs asked at once: a run whose workers are gone answers no query, and holds its slot for ``QUERY_SECONDS``."""
GATED_WORKFLOWS = ("DevSecOpsPipelineWorkflow", "CodeGenerationWorkflow", "InfraProvisionWorkflow")


@dataclass(frozen=True)
class Waiting:
    """A run waiting at a gate."""

    run_id: str
    workflow: str
    gate: str
    since: datetime
    since_gate_opened: bool
    timeout_seconds: float
    approvals: int
    required: int
    reason: str

    def left(self, now: datetime) -> float:
        return (self.since - now).total_seconds() + self.timeout_seconds


def _payload(payloads: Any) -> Any:
    """The first payload of ``payloads`` as JSON, or None when there is none or it is not bounded JSON."""
    try:
        data = payloads.payloads[0].data
    except (AttributeError, IndexError):
        return None
    if not isinstance(data, bytes) or len(data) > MAX_PAYLOAD_BYTES:
        return None
    try:
        return load_json(data, max_depth=32)
    except MalformedEvent:
        return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _count(value: Any, default: int = 1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1000 else default


@dataclass
class _Opening:
    since: datetime
    from_gate: bool
    timeout: float
    required: int


async def gate_opening(client: Client, execution: WorkflowExecution, gate: str) -> _Opening:
    """When ``gate`` opened, its timeout and quorum: from the run's ``review.requested`` publication, else from its
    start and its request's approval policy."""
    opening = _Opening(execution.start_time, False, DEFAULT_GATE_TIMEOUT_SECONDS, 1)
    step = f"review.{gate}.requested"
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    seen = 0
    async for event in handle.fetch_history_events():
        seen += 1
        if seen > MAX_HISTORY_EVENTS:
            break
        if event.HasField("workflow_execution_started_event_attributes"):
            request = _payload(event.workflow_execution_started_event_attributes.input)
            policy = request.get("approval_policy") if isinstance(request, dict) else None
            if isinstance(policy, dict):
                timeouts, quorum = policy.get("timeout_seconds"), policy.get("required_approvals")
                if isinstance(timeouts, dict):
                    opening.timeout = _seconds(timeouts.get(gate)) or opening.timeout
                if isinstance(quorum, dict):
                    opening.required = _count(quorum.get(gate), opening.required)
        elif event.HasField("activity_task_scheduled_event_attributes"):
            attributes = event.activity_task_scheduled_event_attributes
            if attributes.activity_type.name != "events.publish":
                continue
            published = _payload(attributes.input)
            if not isinstance(published, dict) or published.get("step") != step:
                continue
            data = published.get("data")
            if isinstance(data, dict):
                opening.timeout = _seconds(data.get("timeout_seconds")) or opening.timeout
                opening.required = _count(data.get("required_approvals"), opening.required)
            opening.since = event.event_time.ToDatetime(tzinfo=UTC)
            opening.from_gate = True
            break  # a gate opens once in a run; what follows (reviews, with their comments) is not needed
    return opening


async def _waiting(client: Client, execution: WorkflowExecution) -> Waiting | None:
    try:
        view: RunStatusView = await fetch_status(client.get_workflow_handle(execution.id), timeout=QUERY_SECONDS)
    except (CliError, TemporalError):  # not a pipeline run, or no worker answers: it is not shown as waiting
        return None
    gate = view.pending_gate
    if view.status != "awaiting_review" or not gate:
        return None
    recorded = view.gate_openings.get(gate)
    if recorded is not None:
        opening = _Opening(recorded.opened_at, True, recorded.timeout_seconds, _count(recorded.required_approvals))
    else:
        opening = await gate_opening(client, execution, gate)
    reason = view.outputs.get(f"{gate}_gate_reason")
    return Waiting(
        run_id=execution.id,
        workflow=execution.workflow_type,
        gate=gate,
        since=opening.since,
        since_gate_opened=opening.from_gate,
        timeout_seconds=opening.timeout,
        approvals=len(view.approvals.get(gate, [])),
        required=opening.required,
        reason="" if reason is None else str(reason),
    )


async def pending_reviews(client: Client, *, limit: int) -> list[Waiting]:
    """The runs waiting at a gate among the first ``limit`` running workflows, the longest waiting first."""
    types = " OR ".join(f'WorkflowType="{name}"' for name in GATED_WORKFLOWS)
    executions = [wf async for wf in client.list_workflows(f'ExecutionStatus="Running" AND ({types})', limit=limit)]
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(execution: WorkflowExecution) -> Waiting | None:
        async with slots:
            return await _waiting(client, execution)

    found = await asyncio.gather(*(one(e) for e in executions))
    return sorted((w for w in found if w is not None), key=lambda w: w.since)


def duration(seconds: float) -> str:
    """``3d 04h``, ``2h 05m``, ``4m 10s``, ``12s``."""
    seconds = int(max(0.0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def pending_table(waiting: list[Waiting], now: datetime) -> Table:
    table = Table(title=Text(f"{len(waiting)} runs waiting for a review"), title_justify="left")
    for column in ("run", "gate", "waiting since (UTC)", "waiting for", "time left", "approvals", "why"):
        table.add_column(column, overflow="fold")
    for w in waiting:
        since = w.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        left = w.left(now)
        table.add_row(
            plain(w.run_id, one_line=True),
            plain(w.gate, style="bold yellow", one_line=True),
            Text(since) if w.since_gate_opened else Text(f"{since} (run start)", style="dim"),
            Text(duration((now - w.since).total_seconds())),
            Text(duration(left)) if left > 0 else Text("timing out", style="bold red"),
            Text(f"{w.approvals}/{w.required}"),
            plain(w.reason, one_line=True),
        )
    return table


@reviews_app.command("pending")
def reviews_pending(
    limit: Annotated[int, typer.Option(help="How many running workflows to look at.", min=1)] = 500,
) -> None:
    """Every run waiting at a gate: which gate, since when, how long is left, approvals so far."""
    settings = load_settings()

    async def go() -> list[Waiting]:
        return await pending_reviews(await client_for(settings), limit=limit)

    waiting = run(go(), settings)
    if not waiting:
        say("no run is waiting for a review")
        return
    console.print(pending_table(waiting, datetime.now(UTC)))
