"""The pipeline saga on the real Temporal dev server with the real agents."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import nats
import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError

from agents.sre import SREAgent
from agents.workspace import Workspaces
from events.models import ReviewDecision
from workflows.models import PIPELINE_STAGES

from .conftest import Harness, failing, status, wait_for, wait_for_gate

pytestmark = pytest.mark.workflow

INSECURE_SOURCE = {
    "ops.py": "import subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n",
}
BIG_STREAM = {"kind": "stream", "name": "orders", "max_bytes": 2 * 1024**3}
SMALL_INFRA = [{"kind": "directory", "name": "assets"}, {"kind": "stream", "name": "audit"}]


def approve(gate: str, reviewer: str = "bob", comment: str = "") -> ReviewDecision:
    return ReviewDecision(gate=gate, reviewer=reviewer, approved=True, comment=comment)


def reject(gate: str, reviewer: str = "bob") -> ReviewDecision:
    return ReviewDecision(gate=gate, reviewer=reviewer, approved=False, comment="not like this")


def steps(view: Any) -> list[tuple[str, str]]:
    return [(c.step, c.outcome) for c in view.compensations]


async def stream_exists(nats_url: str, name: str) -> bool:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return False
        return True
    finally:
        await nc.close()


def port_answers(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def failure_of(handle: Any) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ApplicationError), cause
    return cause


# --- the happy path ----------------------------------------------------------------------------------------------


async def test_happy_path_runs_all_stages_for_real(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(infrastructure=SMALL_INFRA)
        result = await handle.result()
        view = await status(handle)

    assert result.status == "succeeded"
    assert view.status == "succeeded"
    assert list(view.stages) == list(PIPELINE_STAGES)
    assert set(view.stages.values()) == {"succeeded"}
    assert view.compensations == []
    assert view.outputs["provider"] == "offline-patterns"
    assert view.outputs["tests_passed"] > 0
    assert view.outputs["coverage"] >= 85
    assert view.outputs["criticals"] == 0
    assert view.outputs["infra_impact"] in {"LOW", "MEDIUM"}
    # what the stages did is really there
    workspaces = Workspaces(harness.settings.data_path / "workspaces")
    assert any(workspaces.src(handle.id).glob("*.py"))
    assert (harness.infra_dir("assets")).is_dir()
    assert await stream_exists(harness.settings.nats_url, harness.stream("audit"))
    assert port_answers(str(view.outputs["deployment_url"]))
    assert list((harness.settings.data_path / "monitoring").rglob(f"*{handle.id}*"))


async def test_unchecked_alert_rules_are_a_warning_of_the_run(harness: Harness) -> None:
    """Without promtool the rules are written unchecked, and the run says so rather than pretending."""
    unchecked = SREAgent(harness.settings.data_path / "monitoring", promtool="/nonexistent/promtool")
    async with harness.worker(unchecked.setup_monitoring):
        handle = await harness.start_pipeline()
        result = await handle.result()
        view = await status(handle)

    assert result.status == "succeeded"
    assert view.stages["setup_monitoring"] == "succeeded"
    assert any("setup_monitoring: promtool not found" in w and "unchecked" in w for w in result.warnings)


async def test_monitoring_failure_is_recorded_and_the_run_still_succeeds(harness: Harness) -> None:
    async with harness.worker(failing("sre.setup_monitoring")):
        handle = await harness.start_pipeline()
        result = await handle.result()
        view = await status(handle)

    assert result.status == "succeeded"
    assert view.stages["setup_monitoring"] == "failed"
    assert view.stages["verify_deployment"] == "succeeded"
    assert any("setup_monitoring failed" in w for w in result.warnings)
    assert view.compensations == []


# --- failures at each stage with side effects compensate in reverse order ----------------------------------------

EXPECTED_COMPENSATIONS = {
    "codegen.generate_code": ("generate_code", ["cleanup_code"]),
    "testgen.generate_tests": ("generate_tests", ["cleanup_tests", "cleanup_code"]),
    "testgen.execute_tests": ("execute_tests", ["cleanup_tests", "cleanup_code"]),
    "security.scan": ("security_scan", ["cleanup_tests", "cleanup_code"]),
    "infra.plan": ("plan_infra", ["cleanup_tests", "cleanup_code"]),
    "infra.provision": ("provision_infra", ["destroy_infra", "cleanup_tests", "cleanup_code"]),
    "deploy.deploy": (
        "deploy_application",
        ["rollback_deployment", "destroy_infra", "cleanup_tests", "cleanup_code"],
    ),
    "deploy.verify": (
        "verify_deployment",
        ["rollback_deployment", "destroy_infra", "cleanup_tests", "cleanup_code"],
    ),
}


@pytest.mark.parametrize("activity_name", list(EXPECTED_COMPENSATIONS))
async def test_failure_at_each_stage_compensates_newest_first(harness: Harness, activity_name: str) -> None:
    stage, expected = EXPECTED_COMPENSATIONS[activity_name]
    async with harness.worker(failing(activity_name)):
        handle = await harness.start_pipeline(infrastructure=SMALL_INFRA)
        error = await failure_of(handle)
        view = await status(handle)

    assert error.type == "PipelineFailed"
    assert view.status == "failed"
    assert view.stages[stage] == "failed"
    assert f"injected failure in {activity_name}" in (view.error or "")
    assert steps(view) == [(step, "completed") for step in expected]
    # later stages never ran
    later = PIPELINE_STAGES[PIPELINE_STAGES.index(stage) + 1 :]
    assert all(view.stages[s] == "pending" for s in later)
    # and what earlier stages did is gone
    workspaces = Workspaces(harness.settings.data_path / "workspaces")
    assert not any(workspaces.src(handle.id).glob("*.py"))
    assert not any(workspaces.tests(handle.id).glob("*.py"))
    assert not (harness.infra_dir("assets")).exists()
    assert not await stream_exists(harness.settings.nats_url, harness.stream("audit"))


async def test_verify_failure_stops_the_real_deployment(harness: Harness) -> None:
    async with harness.worker(failing("deploy.verify")):
        handle = await harness.start_pipeline()
        await failure_of(handle)
        view = await status(handle)
    url = str(view.outputs["deployment_url"])
    assert steps(view)[0] == ("rollback_deployment", "completed")
    assert not port_answers(url)


async def test_a_failing_compensation_is_recorded_and_the_rest_still_run(harness: Harness) -> None:
    async with harness.worker(failing("deploy.verify"), failing("infra.destroy", "destroy broke")):
        handle = await harness.start_pipeline(infrastructure=SMALL_INFRA)
        await failure_of(handle)
        view = await status(handle)

    assert [c.step for c in view.compensations] == [
        "rollback_deployment",
        "destroy_infra",
        "cleanup_tests",
        "cleanup_code",
    ]
    outcomes = {c.step: c for c in view.compensations}
    assert outcomes["destroy_infra"].outcome == "failed"
    assert "destroy broke" in (outcomes["destroy_infra"].error or "")
    assert outcomes["rollback_deployment"].outcome == "completed"
    assert outcomes["cleanup_code"].outcome == "completed"
    assert not port_answers(str(view.outputs["deployment_url"]))


# --- gates -------------------------------------------------------------------------------------------------------


async def test_security_gate_opens_on_criticals_and_approval_lets_the_run_finish(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(source=INSECURE_SOURCE, test_policy={"min_coverage": 0})
        view = await wait_for_gate(handle, "security")
        assert view.status == "awaiting_review"
        assert view.stage == "security_scan"
        assert view.outputs["criticals"] >= 1
        await handle.signal("review", approve("security"))
        result = await handle.result()
        view = await status(handle)
    assert result.status == "succeeded"
    assert view.gates == {"security": "approved"}
    assert [(a.reviewer, a.accepted) for a in view.audit] == [("bob", True)]


async def test_security_gate_rejected_compensates(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(source=INSECURE_SOURCE, test_policy={"min_coverage": 0})
        await wait_for_gate(handle, "security")
        await handle.signal("review", reject("security"))
        error = await failure_of(handle)
        view = await status(handle)
    assert error.type == "GateRejected"
    assert view.status == "rejected"
    assert view.gates["security"] == "rejected"
    assert steps(view) == [("cleanup_tests", "completed"), ("cleanup_code", "completed")]
    assert view.stages["deploy_application"] == "pending"


async def test_security_gate_times_out_from_the_policy(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(
            source=INSECURE_SOURCE,
            test_policy={"min_coverage": 0},
            approval_policy={"timeout_seconds": {"security": 2}},
        )
        error = await failure_of(handle)
        view = await status(handle)
    assert error.type == "GateTimedOut"
    assert view.status == "timed_out"
    assert view.gates["security"] == "expired"
    assert steps(view) == [("cleanup_tests", "completed"), ("cleanup_code", "completed")]


async def test_infra_gate_needs_the_policy_quorum(harness: Harness) -> None:
    policy = {"reviewers": ["bob", "carol"], "required_approvals": {"infra": 2}}
    async with harness.worker():
        handle = await harness.start_pipeline(infrastructure=[BIG_STREAM], approval_policy=policy)
        view = await wait_for_gate(handle, "infra")
        assert view.outputs["infra_impact"] == "HIGH"
        await handle.signal("review", approve("infra", "bob"))
        view = await wait_for(handle, lambda v: len(v.audit) == 1)
        assert view.pending_gate == "infra"
        assert view.approvals["infra"] == ["bob"]
        await handle.signal("review", approve("infra", "carol"))
        result = await handle.result()
        view = await status(handle)
    assert result.status == "succeeded"
    assert view.gates["infra"] == "approved"
    assert await stream_exists(harness.settings.nats_url, harness.stream("orders"))


async def test_infra_gate_rejected_provisions_nothing(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(infrastructure=[BIG_STREAM])
        await wait_for_gate(handle, "infra")
        await handle.signal("review", reject("infra"))
        error = await failure_of(handle)
        view = await status(handle)
    assert error.type == "GateRejected"
    assert view.stages["provision_infra"] == "failed"
    assert steps(view) == [("cleanup_tests", "completed"), ("cleanup_code", "completed")]
    assert not await stream_exists(harness.settings.nats_url, harness.stream("orders"))


async def test_infra_gate_times_out(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(
            infrastructure=[BIG_STREAM], approval_policy={"timeout_seconds": {"infra": 1.5}}
        )
        error = await failure_of(handle)
        view = await status(handle)
    assert error.type == "GateTimedOut"
    assert view.gates["infra"] == "expired"


async def test_prod_deploy_gate_approved(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod")
        view = await wait_for_gate(handle, "deploy")
        assert view.stages["deploy_application"] == "awaiting_review"
        assert view.stages["verify_deployment"] == "pending"
        await handle.signal("review", approve("deploy", comment="ship it"))
        result = await handle.result()
    assert result.status == "succeeded"
    assert port_answers(str(result.outputs["deployment_url"]))


async def test_prod_deploy_gate_rejected_compensates_everything_before_it(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod", infrastructure=[{"kind": "directory", "name": "x"}])
        # prod makes the plan HIGH: the infra gate comes first
        await wait_for_gate(handle, "infra")
        await handle.signal("review", approve("infra"))
        await wait_for_gate(handle, "deploy")
        await handle.signal("review", reject("deploy"))
        error = await failure_of(handle)
        view = await status(handle)
    assert error.type == "GateRejected"
    assert steps(view) == [
        ("destroy_infra", "completed"),
        ("cleanup_tests", "completed"),
        ("cleanup_code", "completed"),
    ]
    assert not (harness.infra_dir("x", "prod")).exists()


async def test_prod_deploy_gate_times_out(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod", approval_policy={"timeout_seconds": {"deploy": 1}})
        error = await failure_of(handle)
        view = await status(handle)
    assert error.type == "GateTimedOut"
    assert view.status == "timed_out"
    assert view.gates["deploy"] == "expired"


# --- reviews the policy refuses -------------------------------------------------------------------------------------


async def test_refused_reviews_change_nothing_and_are_audited(harness: Harness) -> None:
    policy = {"reviewers": ["bob", "carol"], "required_approvals": {"deploy": 2}}
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod", approval_policy=policy)
        await handle.signal("review", approve("deploy", "bob"))  # before the gate opens: not pending
        await wait_for_gate(handle, "deploy")
        await handle.signal("review", approve("deploy", "alice"))  # the requester
        await handle.signal("review", approve("deploy", "mallory"))  # not in the policy
        await handle.signal("review", approve("security", "bob"))  # another gate, not pending
        await handle.signal("review", approve("launch", "bob"))  # no such gate
        await handle.signal("review", approve("deploy", "bob"))  # accepted: 1 of 2
        await handle.signal("review", approve("deploy", "bob"))  # the same reviewer again
        view = await wait_for(handle, lambda v: len(v.audit) == 7)
        assert view.pending_gate == "deploy"
        assert view.gates["deploy"] == "pending"
        assert view.approvals["deploy"] == ["bob"]
        await handle.signal("review", approve("deploy", "carol"))
        await handle.result()
        view = await status(handle)

    audit = [(a.reviewer, a.gate, a.accepted, a.reason) for a in view.audit]
    assert [a[2] for a in audit] == [False, False, False, False, False, True, False, True]
    reasons = [a[3] for a in audit]
    assert "not pending" in reasons[0]
    assert "requested this run" in reasons[1]
    assert "not a reviewer allowed" in reasons[2]
    assert "'security' is not pending" in reasons[3]
    assert "unknown gate" in reasons[4]
    assert "already approved" in reasons[6]
    assert view.status == "succeeded"


# --- cancellation ----------------------------------------------------------------------------------------------------


async def test_cancellation_compensates_and_ends_cancelled(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod", infrastructure=SMALL_INFRA)
        await wait_for_gate(handle, "infra")
        await handle.signal("review", approve("infra"))
        await wait_for_gate(handle, "deploy")
        assert await stream_exists(harness.settings.nats_url, harness.stream("audit", "prod"))
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        view = await status(handle)
    assert isinstance(info.value.cause, CancelledError)
    assert view.status == "cancelled"
    assert steps(view) == [
        ("destroy_infra", "completed"),
        ("cleanup_tests", "completed"),
        ("cleanup_code", "completed"),
    ]
    assert not await stream_exists(harness.settings.nats_url, harness.stream("audit", "prod"))


async def test_cancellation_during_a_running_stage(harness: Harness) -> None:
    gate = asyncio.Event()

    from temporalio import activity

    @activity.defn(name="security.scan")
    async def slow_scan(_: Any) -> Any:
        gate.set()
        while True:
            activity.heartbeat()
            await asyncio.sleep(0.1)

    async with harness.worker(slow_scan):
        handle = await harness.start_pipeline()
        await asyncio.wait_for(gate.wait(), 90)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)
    assert view.status == "cancelled"
    assert view.stages["security_scan"] == "cancelled"
    assert steps(view) == [("cleanup_tests", "completed"), ("cleanup_code", "completed")]


async def test_tests_that_miss_too_many_mutants_do_not_count(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(
            prompt="parse and compare semantic version strings",
            test_policy={"min_coverage": 85, "mutants": 4, "min_mutation_score": 1.0},
        )
        error = await failure_of(handle)
        view = await status(handle)
    assert error.type == "PipelineFailed"
    assert view.stages["execute_tests"] == "failed"
    assert "mutants" in (view.error or "") and "below the policy's 100%" in (view.error or "")
    assert 0 < float(view.outputs["mutation_score"]) < 1
    assert steps(view) == [("cleanup_tests", "completed"), ("cleanup_code", "completed")]
