"""How runs, events and dead letters look in a terminal.

Every string that comes from a person, an event or a run (names, comments, ids, errors, outputs) is turned into a
:class:`rich.text.Text` by :func:`plain`: it is never parsed as markup or emoji codes, and its control characters
are shown escaped instead of reaching the terminal. The styling of our own words is given with ``style=``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from quantum.bus import Letter
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

_BIDI_CONTROLS = (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ESCAPES = {
    code: f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
    for code in (*range(0x00, 0x20), *range(0x7F, 0xA0), *_BIDI_CONTROLS, *range(0xD800, 0xE000))
}
"""Control characters, the marks that reorder text, and lone surrogates (which no terminal encoding can carry)."""
_BLOCK_ESCAPES = {code: text for code, text in _ESCAPES.items() if chr(code) not in "\n\t"}
_LINE_ESCAPES = _ESCAPES | {ord("\n"): "\\n", ord("\t"): "\\t"}


def as_string(value: Any) -> str:
    """``value`` as text: a string as it is, nothing as empty, an object or a list as JSON (as in an event)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict | list | tuple):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # a key that is not a string
        return f"({type(value).__name__} that is not JSON)"
    except RecursionError:
        return f"({type(value).__name__} nested too deeply to show)"


def plain(value: Any, *, style: str = "", one_line: bool = False) -> Text:
    """``value`` as literal text: no markup, no emoji codes, control characters (and newlines if ``one_line``)
    escaped the way Python writes them."""
    return Text(as_string(value).translate(_LINE_ESCAPES if one_line else _BLOCK_ESCAPES), style=style)


def stage_table(view: RunStatusView) -> Table:
    table = Table(expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("stage")
    table.add_column("state")
    for number, (name, state) in enumerate(view.stages.items(), start=1):
        mark, style = STAGE_STYLE.get(state, ("?", ""))
        table.add_row(str(number), plain(name), Text(f"{mark} ", style=style) + plain(state, style=style))
    return table


def status_panel(view: RunStatusView) -> Group:
    """The stage table, then gates, compensations, outputs and audit where there are any."""
    parts: list[Any] = [plain(f"{view.workflow} {view.pipeline_id}", style="bold", one_line=True), stage_table(view)]
    line = Text("status: ")
    line.append_text(plain(view.status, style=STATUS_STYLE.get(view.status, "")))
    if view.pending_gate:
        line.append_text(Text("   waiting for a review of gate '", style="yellow"))
        line.append_text(plain(view.pending_gate, style="yellow", one_line=True))
        line.append_text(Text("'", style="yellow"))
        reason = view.outputs.get(f"{view.pending_gate}_gate_reason")
        if reason:
            line.append_text(plain(f" ({as_string(reason)})", style="dim", one_line=True))
    parts.append(line)
    if view.error:
        parts.append(Text("error: ", style="red") + plain(view.error, style="red"))
    for warning in view.warnings:
        parts.append(Text("warning: ", style="yellow") + plain(warning, style="yellow"))
    if view.compensations:
        comp = Table(title=Text("compensations (in the order they ran)"), title_justify="left")
        comp.add_column("step")
        comp.add_column("outcome")
        comp.add_column("error", overflow="fold")
        for record in view.compensations:
            style = "green" if record.outcome == "completed" else "bold red"
            comp.add_row(plain(record.step), plain(record.outcome, style=style), plain(record.error))
        parts.append(comp)
    if view.audit:
        parts.append(audit_table(view))
    if view.audit_dropped:
        parts.append(Text(f"{view.audit_dropped} earlier refused reviews are not shown", style="dim"))
    return Group(*parts)


def audit_table(view: RunStatusView) -> Table:
    table = Table(title=Text("reviews"), title_justify="left")
    for column in ("gate", "reviewer", "decision", "accepted", "comment", "why refused"):
        table.add_column(column, overflow="fold")
    for entry in view.audit:
        table.add_row(
            plain(entry.gate),
            plain(entry.reviewer),
            Text("approve" if entry.approved else "reject"),
            Text("yes", style="green") if entry.accepted else Text("refused", style="red"),
            plain(entry.comment),
            plain(entry.reason),
        )
    return table


def outputs_table(outputs: dict[str, Any]) -> Table:
    table = Table(title=Text("results"), title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in outputs.items():
        if value is not None and not key.endswith("_gate_reason"):
            table.add_row(plain(key), plain(value))
    return table


def runs_table(rows: Iterable[tuple[str, str, str, str]]) -> Table:
    table = Table(title=Text("runs"), title_justify="left")
    for column in ("workflow id", "type", "Temporal status", "started"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(plain(cell, one_line=True) for cell in row))
    return table


def attempts_table(view: RunStatusView) -> Table:
    """Each attempt of the build: who wrote the code, how it ended, what it used."""
    table = Table(title=Text("attempts"), title_justify="left")
    for column in ("#", "provider", "model", "outcome", "tokens", "cost", "error"):
        table.add_column(column, overflow="fold")
    for a in view.attempts:
        table.add_row(
            str(a.attempt),
            plain(a.provider, one_line=True),
            plain(a.model or "", one_line=True),
            Text(a.outcome, style="green" if a.outcome == "passed" else "red"),
            str(a.prompt_tokens + a.completion_tokens),
            f"{a.cost:g}",
            plain(a.error),
        )
    return table


def summary(view: RunStatusView, ui_url: str | None, namespace: str) -> Group:
    """What a finished run produced (with the build's attempts when it took more than one, or a model's), and where
    to see its history."""
    body: list[Any] = [outputs_table(view.outputs)]
    if len(view.attempts) > 1 or any(a.model for a in view.attempts):
        body.append(attempts_table(view))
    if ui_url:
        link = f"Temporal UI: {ui_url}/namespaces/{namespace}/workflows/{view.pipeline_id}"
        body.append(plain(link, style="blue", one_line=True))
    return Group(*body)


def result_panel(view: RunStatusView, ui_url: str | None, namespace: str) -> Panel:
    body = Group(status_panel(view), summary(view, ui_url, namespace))
    title = plain(f"{view.pipeline_id}: {view.status}", one_line=True)
    return Panel(body, title=title, border_style=STATUS_STYLE.get(view.status, ""))


def dead_letters_table(stream: str, letters: list[Letter], *, more: bool = False) -> Table:
    """The dead letters; ``more`` says the stream holds more than these."""
    count = f"the first {len(letters)} dead letters" if more else f"{len(letters)} dead letters"
    table = Table(title=plain(f"{stream}: {count}"), title_justify="left")
    for column in ("seq", "time", "from subject", "bytes", "reason"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        when = letter.time.strftime("%Y-%m-%d %H:%M:%S") if letter.time else ""
        size = str(letter.original_size if letter.original_size is not None else len(letter.data))
        if letter.partial:
            size += f" (first {len(letter.data)} kept)"
        table.add_row(str(letter.sequence), when, plain(letter.subject, one_line=True), size, plain(letter.reason))
    return table


def _field(data: Any, *names: str) -> Any:
    """The first of ``names`` that ``data`` (an object, if it is one) holds a value for."""
    if not isinstance(data, dict):
        return None
    for name in names:
        value = data.get(name)
        if value not in (None, ""):
            return value
    return None


def event_line(event: Any) -> Text:
    """One line for an event as ``quantum events tail`` shows it, whatever shape the event has.

    An event that is not an object, or whose fields are not the strings they should be, is shown as its JSON.
    """
    if not isinstance(event, dict):
        return Text(f"{'':12}  ") + plain(event, one_line=True)
    data, time = event.get("data"), event.get("time")
    when = time[11:23] if isinstance(time, str) else as_string(time)
    kind = as_string(event.get("type")) or "?"
    pipeline = as_string(_field(data, "pipeline_id", "project"))
    detail = _field(data, "stage", "step", "gate", "status", "raw")
    if detail is None and data is not None and not isinstance(data, dict):
        detail = data
    line = plain(f"{when:<12}  ", style="dim", one_line=True) + plain(f"{kind:<34}", style="bold", one_line=True)
    return line + plain(f" {pipeline:<46} ", one_line=True) + plain(detail, one_line=True)


REVIEW_BRIEF: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "tests",
        (
            ("tests_passed", "passed"),
            ("tests_failed", "failed"),
            ("coverage", "line coverage %"),
            ("mutation_score", "mutation score"),
            ("acceptance_passed", "acceptance passed"),
            ("acceptance_total", "acceptance checks"),
            ("isolation", "isolation"),
        ),
    ),
    (
        "security",
        (
            ("findings", "findings"),
            ("findings_critical", "critical"),
            ("findings_high", "high"),
            ("new_findings", "new since the last release"),
            ("fixed_findings", "fixed since the last release"),
        ),
    ),
    (
        "infra plan",
        (
            ("infra_impact", "impact"),
            ("infra_changes", "changes"),
            ("infra_references", "references"),
            ("infra_resources", "provisioned"),
        ),
    ),
    ("release", (("release", "digest"), ("deployment_url", "deployed at"))),
)
"""What a reviewer looks at before deciding, as ``quantum pipeline show`` lists it: (section, ((output, label)...))."""


def reviewer_brief(view: RunStatusView) -> Table:
    """What a reviewer needs at a glance: test results, security findings, the infra plan and the digests, each
    named even when the run has not produced it yet (``—``); then the digest each gate asks about and the challenge a
    signed review of it signs, if any."""
    table = Table(title=Text("for the reviewer"), title_justify="left", show_header=False)
    table.add_column("section", style="bold")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for section, rows in REVIEW_BRIEF:
        for number, (key, label) in enumerate(rows):
            value = view.outputs.get(key)
            shown = plain(value) if value is not None else Text("—", style="dim")
            table.add_row(section if number == 0 else "", label, shown)
    for section, field in (("gate digests", "gate_digests"), ("gate challenges", "gate_challenges")):
        named = getattr(view, field, None)  # what each gate asks about and what a signed review signs
        if isinstance(named, dict):
            for number, (gate, value) in enumerate(sorted(named.items())):
                table.add_row(section if number == 0 else "", plain(gate, one_line=True), plain(value))
    return table
