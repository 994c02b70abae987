"""``quantum bench events``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from quantum.bench import bench_events
from quantum.cli.apps import bench_app
from quantum.cli.errors import run
from quantum.cli.output import console
from quantum.cli.params import check_positive
from quantum.views import plain


@bench_app.command("events")
def bench_events_command(
    events: Annotated[int, typer.Option(help="Events (and raw starts) for the throughput comparison.", min=1)] = 300,
    rate: Annotated[
        float, typer.Option(help="Steady rate for the latency measurement, events/s.", callback=check_positive)
    ] = 100.0,
    seconds: Annotated[float, typer.Option(help="How long the steady rate lasts.", callback=check_positive)] = 10.0,
) -> None:
    """Events started per second through the bridge against raw start_workflow, and publish-to-start latency."""
    doing = Text(f"benchmarking on a fresh embedded stack: {events} events, then {rate:g}/s for {seconds:g} s")
    with console.status(doing):
        report = run(bench_events(events=events, rate=rate, seconds=seconds))
    table = Table(title=Text("quantum bench events"), title_justify="left")
    for column in ("measure", "value", "ratio to baseline"):
        table.add_column(column)
    for row in report.rows():
        table.add_row(*(plain(cell) for cell in row))
    console.print(table)
    notes = f"{report.started} runs started; {report.latency_samples} latency samples; " + "; ".join(report.notes)
    console.print(plain(notes), soft_wrap=True)
