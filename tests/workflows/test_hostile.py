"""The saga against hostile requests, reviewers and code, on the real dev server with the real agents."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError

from agents.deploy import pid_alive
from events.models import PipelineRequest, ReviewDecision

from .conftest import Harness, failing, status, wait_for, wait_for_gate

pytestmark = pytest.mark.workflow


def review(gate: str, reviewer: str, *, approved: bool = True, comment: str = "") -> ReviewDecision:
    return ReviewDecision(gate=gate, reviewer=reviewer, approved=approved, comment=comment)


async def settle(handle: Any) -> None:
    with pytest.raises(WorkflowFailureError):
        await handle.result()


# --- reviewers -------------------------------------------------------------------------------------------------------


async def test_reviewer_names_are_compared_normalised(harness: Harness) -> None:
    """``Ann`` is the requester ``ann``; ``erin`` and `` ERIN `` are one reviewer and make no quorum of two."""
    async with harness.worker():
        handle = await harness.start_pipeline(
            requested_by="ann",
            environment="prod",
            approval_policy={"reviewers": ["erin", "bob"], "required_approvals": {"deploy": 2}},
        )
        await wait_for_gate(handle, "deploy")
        await handle.signal("review", review("deploy", "Ann"))
        await handle.signal("review", review("deploy", "erin"))
        await handle.signal("review", review("deploy", " ERIN "))
        await handle.signal("review", review("deploy", "ｅｒｉｎ"))  # full-width letters
        view = await wait_for(handle, lambda v: len(v.audit) == 4)
        assert [e.accepted for e in view.audit] == [False, True, False, False]
        assert "requested this run" in view.audit[0].reason
        assert all("already approved" in e.reason for e in view.audit[2:])
        assert view.gates["deploy"] == "pending" and view.approvals["deploy"] == ["erin"]
        await handle.signal("review", review("deploy", "Bob"))
        result = await handle.result()
    assert result.status == "succeeded"


async def test_huge_comments_never_make_a_run_unmanageable(harness: Harness) -> None:
    """Three refused reviews with 1.5 MB comments, then a rejection: status answers and the run closes."""
    huge = "x" * (1536 * 1024)
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod")
        await wait_for_gate(handle, "deploy")
        for name in ("carol", "dave", "erin"):
            await handle.signal("review", review("deploy", name, comment=huge))
        view = await wait_for(handle, lambda v: len(v.audit) == 3)
        assert not any(e.accepted for e in view.audit)
        assert all("over the 2000 limit" in e.reason and len(e.comment) <= 500 for e in view.audit)
        await handle.signal("review", review("deploy", "bob", approved=False, comment="no"))
        await settle(handle)
        view = await status(handle)
    assert view.status == "rejected"
    assert len(view.model_dump_json()) < 64 * 1024


async def test_a_flood_of_refused_reviews_keeps_the_audit_bounded(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod")
        await wait_for_gate(handle, "deploy")
        for index in range(80):
            await handle.signal("review", review("nope", f"spammer-{index}", comment="y" * 2000))
        await handle.signal("review", review("deploy", "bob"))
        result = await handle.result()
        view = await status(handle)
    assert result.status == "succeeded"
    assert view.audit[-1].accepted and view.audit[-1].reviewer == "bob"
    assert len(view.audit) == 51 and view.audit_dropped == 30


# --- hostile code ---------------------------------------------------------------------------------------------------


async def test_planted_links_neither_escape_nor_skip_the_mutation_policy(harness: Harness, tmp_path: Path) -> None:
    """Code under test links ``/workspace/mutants`` to a host directory as soon as Python starts in the sandbox."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "keep.txt").write_text("mine")
    planted = (
        "import os\n"
        "for name in ('mutants', 'mutants/run.py'):\n"
        "    try:\n"
        f"        os.symlink({str(host)!r}, os.path.join('/workspace', name))\n"
        "    except OSError:\n"
        "        pass\n"
    )
    async with harness.worker():
        handle = await harness.start_pipeline(source={"sitecustomize.py": planted})
        result = await handle.result()
        view = await status(handle)
    assert [p.name for p in host.iterdir()] == ["keep.txt"] and (host / "keep.txt").read_text() == "mine"
    assert result.status == "succeeded"
    assert view.outputs["mutation_score"] is not None  # measured, not silently skipped


async def test_a_nosec_comment_does_not_open_the_security_gate_silently(harness: Harness) -> None:
    source = {"ops.py": "import subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)  # nosec\n"}
    async with harness.worker():
        handle = await harness.start_pipeline(source=source, test_policy={"min_coverage": 0})
        view = await wait_for_gate(handle, "security")
        assert view.outputs["criticals"] >= 1
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()


@pytest.mark.parametrize("path", ["a\x00b.py", "x" * 300 + ".py", ".git/hook.py", "pkg//mod.py"])
def test_source_paths_are_refused_at_validation_naming_the_field(path: str) -> None:
    with pytest.raises(ValueError) as info:
        PipelineRequest(project="p", prompt="a slugify helper", requested_by="ann", source={path: "x = 1\n"})
    assert "source" in str(info.value) and "source path" in str(info.value)


# --- runs whose ids read alike ---------------------------------------------------------------------------------------


async def test_a_run_never_compensates_another_runs_release(harness: Harness) -> None:
    """``pipeline-coll:2`` fails after deploying; ``pipeline-coll_2``, already deployed, keeps everything."""
    request = PipelineRequest(project=harness.project, prompt="a slugify helper for titles", requested_by="ann")
    async with harness.worker():
        first = await harness.start("DevSecOpsPipelineWorkflow", request, workflow_id="pipeline-coll_2")
        assert (await first.result()).status == "succeeded"
        kept = await status(first)
    assert kept.outputs["deployment_url"]
    async with harness.worker(failing("deploy.verify")):
        second = await harness.start("DevSecOpsPipelineWorkflow", request, workflow_id="pipeline-coll:2")
        await settle(second)
        undone = await status(second)
    assert [c.step for c in undone.compensations] == ["rollback_deployment", "cleanup_tests", "cleanup_code"]
    assert all(c.outcome == "completed" for c in undone.compensations)
    workspaces = harness.agents.codegen.workspaces
    assert any(workspaces.src("pipeline-coll_2").glob("*.py"))
    assert not workspaces.src("pipeline-coll:2").exists()
    verified = await harness.agents.deploy.verify(
        harness.agents.deploy._record("pipeline-coll_2").deployment  # type: ignore[union-attr]
    )
    assert verified.healthy and verified.release_matches


# --- cancellation waits for the work to stop ------------------------------------------------------------------------


async def test_cancellation_waits_for_the_sandbox_before_compensating(harness: Harness) -> None:
    """Tests that run long are cancelled: the sandbox is killed and only then do cleanup_tests and cleanup_code run;
    nothing the code does after the cancellation reaches the run's files."""
    slow = "import time\ntime.sleep(40)\nopen('/workspace/written-after-cancel', 'w').write('late')\n"
    async with harness.worker():
        handle = await harness.start_pipeline(source={"sitecustomize.py": slow})
        await wait_for(handle, lambda v: v.stages["execute_tests"] == "running")
        root = harness.agents.testgen.workspaces.for_run(handle.id)
        while not any((root / "scratch").glob("*/src")):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # pytest is inside the sandbox, sleeping
        await handle.cancel()
        await settle(handle)
        view = await status(handle)
        history = await handle.fetch_history()
    assert view.status == "cancelled"
    assert [c.step for c in view.compensations] == ["cleanup_tests", "cleanup_code"]
    order = [
        (event.event_type, _activity_name(event, history))
        for event in history.events
        if event.event_type
        in (EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    ]
    cancelled_at = order.index((EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED, "testgen.execute_tests"))
    cleanup_at = order.index((EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, "testgen.cleanup_tests"))
    assert cancelled_at < cleanup_at
    assert not _sandboxes_running(root)
    assert not root.exists() or not list(root.rglob("written-after-cancel"))


def _activity_name(event: Any, history: Any) -> str:
    if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        return str(event.activity_task_scheduled_event_attributes.activity_type.name)
    scheduled = event.activity_task_canceled_event_attributes.scheduled_event_id
    for other in history.events:
        if other.event_id == scheduled:
            return str(other.activity_task_scheduled_event_attributes.activity_type.name)
    return ""


def _sandboxes_running(root: Path) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline and pid_alive(int(pid)):
            found.append(cmdline)
    return found
