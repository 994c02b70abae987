"""``quantum bench chaos``: real runs while their workers are killed with SIGKILL, and the side effects counted."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from quantum.chaos import ChaosConfig, ChaosProgress, ChaosReport, bench_chaos
from quantum.cli.apps import bench_app
from quantum.cli.bench import JsonOption, save_json
from quantum.cli.errors import run
from quantum.cli.output import console
from quantum.views import plain


@bench_app.command("chaos")
def bench_chaos_command(
    runs: Annotated[int, typer.Option(help="Real pipeline runs (offline provider).", min=1)] = 6,
    kills: Annotated[int, typer.Option(help="How many times a worker is killed with SIGKILL.", min=0)] = 3,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the pauses before the kills (default: the clock); replays them.")
    ] = None,
    workers: Annotated[int, typer.Option(help="quantum worker processes sharing the task queue.", min=1)] = 2,
    stagger: Annotated[float, typer.Option(help="Seconds between two runs' starts.", min=0)] = 3.0,
    timeout: Annotated[float, typer.Option(help="Seconds the runs get to end after the last kill.", min=1)] = 900.0,
    json_file: JsonOption = None,
) -> None:
    """Kill workers with SIGKILL at random moments of real runs; count duplicates, losses and failover times.

    Exits 1 when a side effect is duplicated or lost, something is left behind, or a run ended neither
    succeeded nor compensated.
    """
    seed = int(time.time()) if seed is None else seed
    config = ChaosConfig(runs=runs, kills=kills, seed=seed, workers=workers, stagger=stagger, timeout=timeout)
    report = _run_with_progress(config)
    console.print(_table(report))
    for note in report.notes:
        console.print(plain(note), soft_wrap=True)
    for detail in report.effects.details + report.orphans:
        console.print(plain(detail, one_line=True), soft_wrap=True)
    if json_file is not None:
        save_json(json_file, report.as_json())
    if not report.ok:
        raise typer.Exit(1)


def _run_with_progress(config: ChaosConfig) -> ChaosReport:
    """The bench, with a bar of the runs that have ended while they are in flight."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TextColumn("runs ended", markup=False),
        MofNCompleteColumn(),
        TextColumn("{task.fields[kills]}", markup=False),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=config.runs, kills="")

        def show(state: ChaosProgress) -> None:
            kills = f"kills {state.kills}/{state.kills_asked}"
            progress.update(task, description=state.phase, completed=state.ended, kills=kills)

        return run(bench_chaos(config, on_progress=show))


def _table(report: ChaosReport) -> Table:
    verdict = Text(" ok", style="green") if report.ok else Text(" FAILED", style="bold red")
    table = Table(title=Text("quantum bench chaos") + verdict, title_justify="left")
    table.add_column("figure")
    table.add_column("value")
    for figure, value in report.rows():
        table.add_row(plain(figure), plain(value))
    return table
