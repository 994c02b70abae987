"""How the CLI words what the services answer, without the services: each error becomes one line, and a bug in a
command still ends in one line and exit 1."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from events.models import ReviewDecision
from quantum.cli import entry, pipeline
from quantum.cli.errors import CliError, explain
from quantum.cli.review import submit_review
from quantum.cli.runs import fetch_status
from quantum.settings import Settings
from workflows.models import RunStatusView

SETTINGS = Settings(temporal_address="temporal.example:7233", nats_url="nats://nats.example:4222", _env_file=None)  # type: ignore[call-arg]


def rpc(status: RPCStatusCode, message: str) -> RPCError:
    return RPCError(message, status, b"")


@pytest.mark.parametrize(
    ("err", "said"),
    [
        (rpc(RPCStatusCode.UNAVAILABLE, "connection refused"), "Temporal at temporal.example:7233 does not answer"),
        (rpc(RPCStatusCode.DEADLINE_EXCEEDED, "Timeout expired"), "is a worker running on task queue"),
        (rpc(RPCStatusCode.NOT_FOUND, "Namespace x is not found."), "namespace 'default' does not exist"),
        (rpc(RPCStatusCode.PERMISSION_DENIED, "no"), "check QUANTUM_TEMPORAL_API_KEY"),
        (rpc(RPCStatusCode.INVALID_ARGUMENT, "WorkflowId is not set"), "refused the call: WorkflowId is not set"),
        (WorkflowQueryFailedError("boom"), "Temporal: boom"),
        (nats.js.errors.BadRequestError(code=400, description="bad request"), "refused the request: bad request"),
        (nats.errors.TimeoutError(), "NATS at nats://nats.example:4222 did not answer in time"),
        (nats.errors.ConnectionClosedError(), "the connection to NATS at nats://nats.example:4222 was lost"),
        (IsADirectoryError(21, "Is a directory", "/tmp/x"), "cannot use /tmp/x: Is a directory"),
    ],
)
def test_service_errors_are_explained_in_one_line(err: Exception, said: str) -> None:
    line = explain(err, SETTINGS)
    assert line is not None and said in line and "\n" not in line


def test_a_bug_is_not_explained_away() -> None:
    assert explain(ZeroDivisionError("division by zero"), SETTINGS) is None


class EndedMeanwhile:
    """A run that was waiting at its gate when asked, and ended before the review reached it."""

    id = "pipeline-x"

    async def query(self, *args: Any, **kwargs: Any) -> RunStatusView:
        return RunStatusView(
            pipeline_id=self.id, workflow="DevSecOpsPipelineWorkflow", status="awaiting_review", pending_gate="deploy"
        )

    async def signal(self, *args: Any, **kwargs: Any) -> None:
        raise rpc(RPCStatusCode.NOT_FOUND, "workflow execution already completed")

    async def describe(self) -> Any:
        return type("Description", (), {"status": WorkflowExecutionStatus.CANCELED})()


def test_a_review_that_arrives_just_after_the_run_ended_says_so() -> None:
    decision = ReviewDecision(gate="deploy", reviewer="erin", approved=True)
    with pytest.raises(CliError) as raised:
        asyncio.run(submit_review(EndedMeanwhile(), decision))  # type: ignore[arg-type]
    assert str(raised.value) == (
        "pipeline-x has already ended (cancelled); reviews are taken only while a gate is pending"
    )


def test_a_bug_in_a_command_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> Settings:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(pipeline, "load_settings", broken)
    assert entry.invoke(["pipeline", "list"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: unexpected ZeroDivisionError: division by zero (QUANTUM_LOG_LEVEL=DEBUG shows where)"


class NoWorker:
    """A run whose task queue nobody polls: Temporal gives up on its status query."""

    id = "pipeline-[orphan]"

    async def query(self, *args: Any, **kwargs: Any) -> RunStatusView:
        raise rpc(RPCStatusCode.CANCELLED, "Timeout expired")


def test_a_status_query_nobody_answers_says_what_to_check() -> None:
    with pytest.raises(CliError) as raised:
        asyncio.run(fetch_status(NoWorker()))  # type: ignore[arg-type]
    assert str(raised.value) == (
        "pipeline-[orphan] did not answer the status query (Timeout expired): is a worker running on its task "
        "queue (`quantum up`)?"
    )
