"""``quantum eval``: build a suite of small tasks through the real path and judge them by hidden tests."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from quantum.cli.apps import app
from quantum.cli.connect import load_settings
from quantum.cli.errors import USAGE, run
from quantum.cli.output import console, fail
from quantum.evaluation.runner import TASKS_FILE, EvalError, EvalReport, TaskResult, evaluate, load_tasks, settings_for
from quantum.views import plain

STYLES = {"solved": "green", "wrong_but_green": "bold red", "refused": "yellow", "failed": "red"}


class Provider(StrEnum):
    configured = "configured"
    offline = "offline"
    model = "model"


@app.command("eval")
def eval_command(
    provider: Annotated[
        Provider, typer.Option(help="offline: the pattern library; model: the configured endpoint; configured: either.")
    ] = Provider.configured,
    tasks_file: Annotated[Path, typer.Option("--tasks", help="A YAML or JSON file of tasks.")] = TASKS_FILE,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only this task (repeatable).")] = None,
    max_attempts: Annotated[int, typer.Option(help="Attempts per task with a model.", min=1, max=10)] = 3,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Build each task with the configured provider, then run its hidden tests: solved, wrong but green (must be
    zero), refused or failed. Exits 1 when any task is wrong but green."""
    try:
        tasks = load_tasks(tasks_file)
        settings = settings_for(load_settings(), provider.value)
    except EvalError as err:
        fail(str(err), USAGE)
    if only:
        unknown = sorted(set(only) - {t.id for t in tasks})
        if unknown:
            fail(f"no task {', '.join(unknown)} in {tasks_file}", USAGE)
        tasks = [t for t in tasks if t.id in only]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        job = bar.add_task("building tasks", total=len(tasks))

        def done(result: TaskResult) -> None:
            bar.advance(job)
            bar.console.print(plain(f"{result.id}: {result.outcome} ({result.seconds:.1f} s)"))

        report = run(evaluate(settings, tasks, max_attempts=max_attempts, progress=done), settings)
    console.print(table(report))
    totals = report.totals
    console.print(
        plain(
            f"{totals['tasks']} tasks with {report.provider}: {totals['solved']} solved, "
            f"{totals['wrong_but_green']} wrong but green, {totals['refused']} refused, {totals['failed']} failed; "
            f"{totals['attempts']} attempts, {totals['tokens']} tokens, {totals['seconds']} s"
        ),
        soft_wrap=True,
    )
    if json_file is not None:
        json_file.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if report.count("wrong_but_green"):
        raise typer.Exit(1)


def table(report: EvalReport) -> Table:
    shown = Table(title=Text(f"quantum eval ({report.provider})"), title_justify="left")
    for column in ("task", "outcome", "attempts", "tokens", "seconds"):
        shown.add_column(column, no_wrap=True)
    shown.add_column("detail", overflow="ellipsis", no_wrap=True, ratio=1)  # whole in the JSON report
    for r in report.results:
        shown.add_row(
            plain(r.id),
            Text(r.outcome, style=STYLES[r.outcome]),
            str(r.attempts),
            str(r.tokens),
            f"{r.seconds:.1f}",
            plain(r.detail, one_line=True),
        )
    return shown
