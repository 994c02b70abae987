"""``quantum bench saga|events|pipeline|footprint``: each prints a table and may write JSON (``--json FILE``).

Each also runs on a cluster of one's own (``--cluster``): the Temporal and NATS the settings name. There ``events``
sends its events on a stream of its own (a deployment's bridge never sees them) and terminates the runs it started,
and ``footprint`` measures the processes of this machine only (the bench's workers)."""

from __future__ import annotations

import json
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from quantum.bench.events import bench_events
from quantum.bench.footprint import bench_footprint
from quantum.bench.pipeline import bench_pipeline
from quantum.bench.report import Progress as Tick
from quantum.bench.report import Report, Series
from quantum.bench.saga import bench_saga
from quantum.cli.apps import bench_app
from quantum.cli.connect import load_settings
from quantum.cli.errors import run
from quantum.cli.output import console, fail
from quantum.cli.params import check_positive
from quantum.settings import Settings
from quantum.views import plain

JsonOption = Annotated[
    Path | None, typer.Option("--json", help="Also write the figures as JSON to this file.", dir_okay=False)
]
Repetitions = Annotated[int, typer.Option(help="Repetitions; the table shows their median and range.", min=1)]
Cluster = Annotated[
    bool,
    typer.Option(
        "--cluster",
        help="Run on the Temporal and NATS the settings name (QUANTUM_TEMPORAL_ADDRESS, QUANTUM_NATS_URL, their TLS, "
        "credentials and payload keys) instead of a fresh embedded stack.",
    ),
]


def cluster_settings(cluster: bool) -> Settings | None:
    return load_settings() if cluster else None


@contextmanager
def progress_bar() -> Iterator[Tick]:
    """A rich progress bar that a suite advances with ``(what, done, total)``."""
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def tick(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        yield tick


def _figure(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"


def report_table(report: Report) -> Table:
    table = Table(title=Text(f"quantum bench {report.suite}"), title_justify="left")
    for column in ("measure", "median", "range", "unit", "target"):
        table.add_column(column)

    def row(series: Series, target: Text) -> None:
        spread = f"{_figure(series.low)} – {_figure(series.high)}" if len(series.values) > 1 else ""
        table.add_row(plain(series.name), _figure(series.median), spread, plain(series.unit), target)

    for series in report.series.values():
        row(series, Text(""))
    for ratio in report.ratios.values():
        if ratio.target is None:
            target = Text("")
        else:
            sign = "≥" if ratio.direction == "at least" else "≤"
            target = Text(f"{sign} {ratio.target:g} ", style="" if ratio.met else "bold red")
            target.append("met" if ratio.met else "missed", style="green" if ratio.met else "bold red")
        row(ratio, target)
    return table


def show(report: Report, json_file: Path | None) -> None:
    """Print the table and the notes; write the JSON."""
    console.print(report_table(report))
    for note in report.notes:
        console.print(plain(f"· {note}"), soft_wrap=True)
    if json_file is not None:
        save_json(json_file, report.to_json())
        console.print(plain(f"figures written to {json_file}"))


def save_json(path: Path, figures: dict[str, Any]) -> None:
    """Write a suite's figures to ``--json``'s file; a file that cannot be written is a clear error."""
    try:
        path.write_text(json.dumps(figures, indent=2) + "\n")
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror or err}")


def measure(make: Any, json_file: Path | None) -> None:
    """Run a suite under a progress bar, then show it."""
    with progress_bar() as tick:
        coroutine: Coroutine[Any, Any, Report] = make(tick)
        report = run(coroutine)
    show(report, json_file)


@bench_app.command("saga")
def bench_saga_command(
    runs: Annotated[int, typer.Option(help="Concurrent runs of each workflow per repetition.", min=1)] = 100,
    repetitions: Repetitions = 3,
    json_file: JsonOption = None,
    cluster: Cluster = False,
) -> None:
    """The saga over no-op agents against a raw workflow running the same activities: runs/s, p50/p99, ratio."""
    settings = cluster_settings(cluster)
    measure(lambda tick: bench_saga(runs=runs, repetitions=repetitions, progress=tick, cluster=settings), json_file)


@bench_app.command("events")
def bench_events_command(
    events: Annotated[int, typer.Option(help="Events (and raw starts) for the throughput comparison.", min=1)] = 300,
    rate: Annotated[
        float, typer.Option(help="Steady rate for the latency measurement, events/s.", callback=check_positive)
    ] = 100.0,
    seconds: Annotated[float, typer.Option(help="How long each steady rate lasts.", callback=check_positive)] = 10.0,
    duplicates: Annotated[
        float, typer.Option(help="Share of events published twice in the last phase.", min=0.0, max=1.0)
    ] = 0.2,
    repetitions: Repetitions = 3,
    json_file: JsonOption = None,
    cluster: Cluster = False,
) -> None:
    """Starts per second through the bridge against raw start_workflow, and publish-to-start latency against the
    raw start call's own, with and without duplicates."""
    settings = cluster_settings(cluster)
    measure(
        lambda tick: bench_events(
            events=events,
            rate=rate,
            seconds=seconds,
            duplicates=duplicates,
            repetitions=repetitions,
            progress=tick,
            cluster=settings,
        ),
        json_file,
    )


@bench_app.command("pipeline")
def bench_pipeline_command(
    runs: Annotated[int, typer.Option(help="Single runs, one after another, for the median.", min=1)] = 3,
    concurrency: Annotated[
        list[int] | None, typer.Option(help="Concurrent runs to try (repeat the option); default 1 2 4 8.")
    ] = None,
    repetitions: Annotated[
        int, typer.Option(help="Repetitions of the concurrency levels; the table shows their median and range.", min=1)
    ] = 2,
    json_file: JsonOption = None,
    cluster: Cluster = False,
) -> None:
    """Real runs on the offline provider: wall time per stage and per run, and how many concurrent runs one worker
    carries before the time per run doubles."""
    levels = sorted(set(concurrency or [1, 2, 4, 8]) | {1})
    settings = cluster_settings(cluster)
    measure(
        lambda tick: bench_pipeline(
            runs=runs, concurrency=levels, repetitions=repetitions, progress=tick, cluster=settings
        ),
        json_file,
    )


@bench_app.command("footprint")
def bench_footprint_command(
    runs: Annotated[int, typer.Option(help="Concurrent saga runs for the loaded figures.", min=1)] = 100,
    repetitions: Repetitions = 3,
    json_file: JsonOption = None,
    cluster: Cluster = False,
) -> None:
    """Resident memory of the worker, the bridge, the Temporal dev server and nats-server, idle and under load (on a
    cluster: the bench's workers only)."""
    settings = cluster_settings(cluster)
    measure(
        lambda tick: bench_footprint(runs=runs, repetitions=repetitions, progress=tick, cluster=settings), json_file
    )
