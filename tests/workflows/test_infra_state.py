"""QInfra's state, order and project chains through the real workflows, checked against the real NATS, the real
files and the real state store."""

from __future__ import annotations

import uuid
from typing import Any

import nats
import pytest
from temporalio import activity
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from agents.infra import kv_bucket_name, stream_name
from agents.models import InfraPlan, PlanInfraInput, ResourceSpec

from .conftest import Harness, status, wait_for_gate
from .test_pipeline import reject

pytestmark = pytest.mark.workflow

BUS = [
    {"kind": "kv", "name": "flags", "depends_on": ["events"]},
    {"kind": "stream", "name": "events"},
    {"kind": "port", "name": "web", "depends_on": ["flags"]},
]


async def bus_has(nats_url: str, stream: str) -> bool:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().stream_info(stream)
    except nats.js.errors.NotFoundError:
        return False
    finally:
        await nc.close()
    return True


async def provision_directly(harness: Harness, project: str, *resources: dict[str, Any]) -> None:
    """Provision ``project`` with the real agent outside any workflow (what an earlier run left)."""
    agent = harness.agents.infra
    specs = [ResourceSpec.model_validate(r) for r in resources]
    plan = await agent.plan(
        PlanInfraInput(run_id=f"earlier-{project}-{uuid.uuid4()}", project=project, environment="dev", resources=specs)
    )
    await agent.provision(plan)


def infra_request(project: str, resources: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"project": project, "requested_by": "alice", "resources": resources, **fields}


async def test_kv_and_stream_exist_after_a_run_and_are_gone_after_its_compensation(harness: Harness) -> None:
    nats_url = harness.settings.nats_url
    bucket, stream = f"KV_{kv_bucket_name(harness.project, 'flags')}", stream_name(harness.project, "events")
    async with harness.worker():
        handle = await harness.start("InfraProvisionWorkflow", infra_request(harness.project, BUS), prefix="infra")
        result = await handle.result()
    assert result.status == "succeeded"
    assert result.outputs["infra_changes"] == "create stream events, create kv flags, create port web"
    assert await bus_has(nats_url, bucket) and await bus_has(nats_url, stream)
    state = harness.agents.infra.load_state(harness.project, "dev")
    assert {r.created_by for r in state.resources.values()} == {handle.id}

    other = f"{harness.project}-b"
    provision_for_real = harness.agents.infra.provision
    seen: dict[str, bool] = {}

    @activity.defn(name="infra.provision")
    async def provisioned_then_lost(plan: InfraPlan) -> None:
        await provision_for_real(plan)
        for name in (f"KV_{kv_bucket_name(other, 'flags')}", stream_name(other, "events")):
            seen[name] = await bus_has(nats_url, name)
        raise ApplicationError("connection lost after provisioning", non_retryable=True)

    async with harness.worker(provisioned_then_lost):
        handle = await harness.start("InfraProvisionWorkflow", infra_request(other, BUS), prefix="infra")
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)
    assert [(c.step, c.outcome) for c in view.compensations] == [("destroy_infra", "completed")]
    assert seen and all(seen.values())  # they really existed
    assert not any([await bus_has(nats_url, name) for name in seen])  # and are really gone
    assert harness.agents.infra.load_state(other, "dev").resources == {}
    # the first project's run is untouched
    assert await bus_has(nats_url, bucket) and await bus_has(nats_url, stream)


async def test_a_cycle_is_refused_at_plan_time_naming_the_resources(harness: Harness) -> None:
    resources = [
        {"kind": "directory", "name": "a", "depends_on": ["b"]},
        {"kind": "stream", "name": "b", "depends_on": ["a"]},
    ]
    async with harness.worker():
        handle = await harness.start(
            "InfraProvisionWorkflow", infra_request(harness.project, resources), prefix="infra"
        )
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        view = await status(handle)
    assert view.stages == {"plan_infra": "failed", "provision_infra": "pending"}
    assert "InvalidRequest: dependency cycle" in (view.error or "")
    assert "a -> b" in (view.error or "") or "b -> a" in (view.error or "")
    assert isinstance(info.value.cause, ApplicationError)


async def test_deleting_a_database_asks_the_infra_gate_in_a_pipeline(harness: Harness) -> None:
    await provision_directly(
        harness, harness.project, {"kind": "directory", "name": "assets"}, {"kind": "sqlite", "name": "orders"}
    )
    db = harness.infra_dir("orders.sqlite3")
    assert db.is_file()
    async with harness.worker():
        handle = await harness.start_pipeline(infrastructure=[{"kind": "directory", "name": "assets"}])
        view = await wait_for_gate(handle, "infra")
        assert view.outputs["infra_impact"] == "HIGH"
        assert "delete sqlite orders" in str(view.outputs["infra_gate_reason"])
        assert "delete sqlite orders" in str(view.outputs["infra_changes"])
        assert db.is_file()  # nothing happens before the gate
        await handle.signal("review", reject("infra"))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert db.is_file()
    assert "orders" in harness.agents.infra.load_state(harness.project, "dev").resources


async def test_a_dependency_on_another_project_provisions_it_first_as_a_child(harness: Harness) -> None:
    other = f"{harness.project}-up"
    await provision_directly(harness, other, {"kind": "stream", "name": "orders"})
    mine = [
        {"kind": "stream", "name": "orders", "from_project": other},
        {"kind": "directory", "name": "work", "depends_on": ["orders"]},
    ]
    async with harness.worker():
        handle = await harness.start("InfraProvisionWorkflow", infra_request(harness.project, mine), prefix="infra")
        result = await handle.result()
        child_id = f"{handle.id}.chain.{harness.project}.{other}"
        child = await harness.client.get_workflow_handle(child_id).describe()
    assert result.outputs["infra_dependencies"] == child_id
    assert child.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED
    assert child.workflow_type == "InfraProvisionWorkflow" and child.parent_id == handle.id
    assert stream_name(other, "orders") in str(result.outputs["infra_references"])
    assert harness.infra_dir("work").is_dir()
    # the other project's state is its own: this run neither created nor owns its stream
    assert "orders" not in harness.agents.infra.load_state(harness.project, "dev").resources


async def test_a_cycle_of_projects_and_a_missing_project_are_refused(harness: Harness) -> None:
    a, b = f"{harness.project}-a", f"{harness.project}-b"
    await provision_directly(harness, b, {"kind": "stream", "name": "jobs"})
    await provision_directly(
        harness, a, {"kind": "stream", "name": "jobs", "from_project": b}, {"kind": "directory", "name": "in"}
    )
    await provision_directly(
        harness, b, {"kind": "stream", "name": "jobs"}, {"kind": "directory", "name": "in", "from_project": a}
    )
    async with harness.worker():
        # a's dependency b names a resource of a: a -> b -> a
        handle = await harness.start(
            "InfraProvisionWorkflow",
            infra_request(
                a, [{"kind": "stream", "name": "jobs", "from_project": b}, {"kind": "directory", "name": "in"}]
            ),
            prefix="infra",
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        cycle = await status(handle)
        handle = await harness.start(
            "InfraProvisionWorkflow",
            infra_request(harness.project, [{"kind": "stream", "name": "jobs", "from_project": "nowhere"}]),
            prefix="infra",
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        missing = await status(handle)
    assert f"project dependency cycle: {a} -> {b} -> {a}" in (cycle.error or "")
    assert "project nowhere has no provisioned infrastructure" in (missing.error or "")
