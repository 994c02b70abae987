"""``quantum deployments list|stop``: the releases recorded in the data directory, and stopping one."""

from __future__ import annotations

from typing import Annotated

import typer
from temporalio.exceptions import ApplicationError

from agents.deploy import DeployAgent, ReleaseRecord
from agents.workspace import Workspaces
from quantum.cli.apps import deployments_app
from quantum.cli.connect import load_settings
from quantum.cli.output import fail, say
from quantum.views import plain


def _agent() -> DeployAgent:
    data = load_settings().data_path
    return DeployAgent(Workspaces(data / "workspaces"), data / "deployments")


def _running(record: ReleaseRecord) -> str:
    return "running" if record.process.alive() else "not running"


@deployments_app.command("list")
def deployments_list() -> None:
    """Every recorded release: its run, project, environment, kind, state, URL and whether it runs."""
    records = _agent().records()
    if not records:
        say("no deployments")
        return
    for record in records:  # one line each: run, project/environment, kind, state, URL, whether it runs
        deployment = record.deployment
        say(
            plain(deployment.run_id, one_line=True),
            "  ",
            plain(f"{record.project}/{record.environment}", one_line=True),
            "  ",
            plain(deployment.kind or "-", one_line=True),
            "  ",
            plain(record.state, one_line=True),
            "  ",
            plain(deployment.url, one_line=True),
            "  ",
            _running(record),
        )


@deployments_app.command("stop")
def deployments_stop(run_id: Annotated[str, typer.Argument(help="The run whose release to stop.")]) -> None:
    """Stop a release; its record stays (state stopped), and a restarted worker leaves it stopped."""
    try:
        stopped = _agent().stop(run_id)
    except ApplicationError as err:
        fail(str(err))
    say("stopped " if stopped else "was not running: ", plain(run_id, one_line=True))
