"""Reviews and run commands against the whole product (`quantum up`): odd names shown as written, and every
refusal or late call answered in one line with the right exit code."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from events.models import ReviewDecision
from tests.cli.support import one_line_error, quantum, requested_run_at_gate

ODD = "[/bold]"
MARKUP = "[red]x[/red] :smile:"


def request_waiting_at_deploy(env: dict[str, str], tmp_path: Path) -> str:
    """A ``prod`` run that only ``erin`` may review, once it waits at its ``deploy`` gate."""
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {
                "project": "oddnames",
                "prompt": "an LRU cache for sessions",
                "requested_by": "ann",
                "environment": "prod",
                "approval_policy": {"reviewers": ["erin"]},
            }
        )
    )
    return requested_run_at_gate(env, str(request))


@pytest.fixture(scope="module")
def waiting_run(product: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    return request_waiting_at_deploy(product, tmp_path_factory.mktemp("waiting"))


async def send_refused_reviews(address: str, run_id: str, count: int) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    handle = client.get_workflow_handle(run_id)
    for n in range(count):
        await handle.signal("review", ReviewDecision(gate="deploy", reviewer=f"stranger-{n}", approved=True))


async def send_signal(address: str, run_id: str, decision: ReviewDecision) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    handle = client.get_workflow_handle(run_id)
    await handle.signal("review", decision)
    for _ in range(100):  # recorded a moment later
        if (await handle.query("status"))["audit"]:
            return
        await asyncio.sleep(0.1)


def test_a_reviewer_named_like_markup_is_shown_as_written(product: dict[str, str], waiting_run: str) -> None:
    env, run_id = product, waiting_run
    odd = quantum(env, "review", run_id, "--gate", "deploy", "--reject", "--reviewer", ODD, "--comment", MARKUP)
    assert odd.returncode == 1 and "Traceback" not in odd.stderr
    assert (
        odd.stderr.strip()
        == f"refused: '{ODD}' is not a reviewer allowed by the approval policy of gate 'deploy' (erin)"
    )
    # a refused Update leaves nothing in the run; the same review as a signal is recorded, refused, in its audit
    decision = ReviewDecision(gate="deploy", reviewer=ODD, approved=False, comment=MARKUP)
    asyncio.run(send_signal(env["QUANTUM_TEMPORAL_ADDRESS"], run_id, decision))
    shown = quantum(env, "pipeline", "status", run_id)
    assert shown.returncode == 0, shown.stderr
    assert ODD in shown.stdout and MARKUP in shown.stdout
    assert run_id in quantum(env, "pipeline", "list").stdout


def test_a_review_is_answered_past_the_bound_on_refused_reviews(product: dict[str, str], waiting_run: str) -> None:
    env, run_id = product, waiting_run
    asyncio.run(send_refused_reviews(env["QUANTUM_TEMPORAL_ADDRESS"], run_id, 55))
    late_stranger = quantum(env, "review", run_id, "--gate", "deploy", "--approve", "--reviewer", "stranger-x")
    assert late_stranger.returncode == 1
    assert late_stranger.stderr.strip() == (
        "refused: 'stranger-x' is not a reviewer allowed by the approval policy of gate 'deploy' (erin)"
    )
    assert "earlier refused reviews are not shown" in quantum(env, "pipeline", "status", run_id).stdout


def test_a_review_is_answered_at_once_with_the_verdict(product: dict[str, str], waiting_run: str) -> None:
    """`quantum review` sends the Update: a review of other content is refused at once, one of the gate's content is
    accepted with the gate's state, the approvals so far and how the reviewer was known."""
    env, run_id = product, waiting_run
    stale = quantum(env, "review", run_id, "--gate", "deploy", "--approve", "--reviewer", "erin", "--digest", "0" * 64)
    assert stale.returncode == 1 and "Traceback" not in stale.stderr
    assert stale.stderr.startswith("refused: the review names digest 000000000000") and "stale" in stale.stderr
    ok = quantum(env, "review", run_id, "--gate", "deploy", "--approve", "--reviewer", "erin")
    assert ok.returncode == 0, ok.stderr
    shown = " ".join(ok.stdout.split())
    assert shown.startswith("accepted: approved gate 'deploy'")
    assert "(approved, 1 of 1 approvals; unauthenticated)" in shown


def test_a_review_or_a_cancellation_of_an_ended_run_says_so(product: dict[str, str], tmp_path: Path) -> None:
    env = product
    run_id = request_waiting_at_deploy(env, tmp_path)
    cancelled = quantum(env, "pipeline", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr

    late = quantum(env, "review", run_id, "--gate", "deploy", "--approve", "--reviewer", "erin")
    assert late.returncode == 1
    assert one_line_error(late) == (
        f"error: {run_id} has already ended (cancelled); reviews are taken only while a gate is pending"
    )
    again = quantum(env, "pipeline", "cancel", run_id)
    assert again.returncode == 1
    assert one_line_error(again) == f"error: {run_id} has already ended (cancelled); there is nothing to cancel"


def test_unknown_runs_and_namespaces_are_one_line(product: dict[str, str]) -> None:
    env = product
    for args in (
        ["pipeline", "status", "pipeline-none"],
        ["pipeline", "cancel", "pipeline-none"],
        ["review", "pipeline-none", "--gate", "deploy", "--approve", "--reviewer", "erin"],
    ):
        missing = quantum(env, *args)
        assert missing.returncode == 1
        assert one_line_error(missing) == "error: no run with id 'pipeline-none'"

    elsewhere = quantum(env | {"QUANTUM_TEMPORAL_NAMESPACE": "nowhere"}, "pipeline", "list")
    assert elsewhere.returncode == 1
    assert "namespace 'nowhere'" in one_line_error(elsewhere)
