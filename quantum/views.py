"""How runs look in a terminal: the live stage table, the result, the list of runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from workflows.models import RunStatusView

STAGE_STYLE = {
    "pending": ("·", "dim"),
    "running": ("▶", "bold cyan"),
    "awaiting_review": ("⏸", "bold yellow"),
    "succeeded": ("✔", "green"),
    "failed": ("✘", "bold red"),
    "skipped": ("–", "dim"),
    "cancelled": ("■", "magenta"),
}
STATUS_STYLE = {
    "running": "cyan",
    "awaiting_review": "yellow",
    "succeeded": "bold green",
    "failed": "bold red",
    "rejected": "bold red",
    "timed_out": "bold red",
    "cancelled": "magenta",
}


def stage_table(view: RunStatusView) -> Table:
    table = Table(expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("stage")
    table.add_column("state")
    for number, (name, state) in enumerate(view.stages.items(), start=1):
        mark, style = STAGE_STYLE.get(state, ("?", ""))
        table.add_row(str(number), name, Text(f"{mark} {state}", style=style))
    return table


def status_panel(view: RunStatusView) -> Group:
    """The stage table, then gates, compensations, outputs and audit where there are any."""
    parts: list[Any] = [Text(f"{view.workflow} {view.pipeline_id}", style="bold"), stage_table(view)]
    line = Text("status: ")
    line.append(view.status, style=STATUS_STYLE.get(view.status, ""))
    if view.pending_gate:
        line.append(f"   waiting for a review of gate '{view.pending_gate}'", style="yellow")
        reason = view.outputs.get(f"{view.pending_gate}_gate_reason")
        if reason:
            line.append(f" ({reason})", style="dim")
    parts.append(line)
    if view.error:
        parts.append(Text(f"error: {view.error}", style="red"))
    for warning in view.warnings:
        parts.append(Text(f"warning: {warning}", style="yellow"))
    if view.compensations:
        comp = Table(title="compensations (in the order they ran)", title_justify="left")
        comp.add_column("step")
        comp.add_column("outcome")
        comp.add_column("error", overflow="fold")
        for record in view.compensations:
            style = "green" if record.outcome == "completed" else "bold red"
            comp.add_row(record.step, Text(record.outcome, style=style), record.error or "")
        parts.append(comp)
    if view.audit:
        parts.append(audit_table(view))
    return Group(*parts)


def audit_table(view: RunStatusView) -> Table:
    table = Table(title="reviews", title_justify="left")
    for column in ("gate", "reviewer", "decision", "accepted", "reason / comment"):
        table.add_column(column)
    for entry in view.audit:
        table.add_row(
            entry.gate,
            entry.reviewer,
            "approve" if entry.approved else "reject",
            Text("yes", style="green") if entry.accepted else Text("refused", style="red"),
            entry.reason or entry.comment,
        )
    return table


def outputs_table(outputs: dict[str, Any]) -> Table:
    table = Table(title="results", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in outputs.items():
        if value is not None and not key.endswith("_gate_reason"):
            table.add_row(key, str(value))
    return table


def runs_table(rows: Iterable[tuple[str, str, str, str]]) -> Table:
    table = Table(title="runs", title_justify="left")
    for column in ("workflow id", "type", "Temporal status", "started"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def summary(view: RunStatusView, ui_url: str | None, namespace: str) -> Group:
    """What a finished run produced, and where to see its history."""
    body: list[Any] = [outputs_table(view.outputs)]
    if ui_url:
        body.append(Text(f"Temporal UI: {ui_url}/namespaces/{namespace}/workflows/{view.pipeline_id}", style="blue"))
    return Group(*body)


def result_panel(view: RunStatusView, ui_url: str | None, namespace: str) -> Panel:
    body = Group(status_panel(view), summary(view, ui_url, namespace))
    return Panel(body, title=f"{view.pipeline_id}: {view.status}", border_style=STATUS_STYLE.get(view.status, ""))
