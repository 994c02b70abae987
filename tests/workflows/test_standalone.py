"""``CodeGenerationWorkflow`` and ``InfraProvisionWorkflow`` each run on their own."""

from __future__ import annotations

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from agents.models import InfraPlan
from agents.workspace import Workspaces
from events.models import ReviewDecision
from workflows.models import CODEGEN_STAGES

from .conftest import Harness, failing, status, wait_for_gate
from .test_pipeline import stream_exists

pytestmark = pytest.mark.workflow

RESOURCES = [{"kind": "directory", "name": "cache"}, {"kind": "stream", "name": "jobs"}]


async def test_code_generation_on_its_own(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start(
            "CodeGenerationWorkflow",
            {"project": "slugs", "prompt": "a slugify helper for titles", "requested_by": "alice"},
            prefix="codegen",
        )
        result = await handle.result()
        view = await status(handle)
    assert result.status == "succeeded"
    assert list(view.stages) == list(CODEGEN_STAGES)
    assert set(view.stages.values()) == {"succeeded"}
    assert result.outputs["provider"] == "offline-patterns"
    assert result.outputs["pattern"] == "slugify"
    assert len(str(result.outputs["release"])) == 64
    src = Workspaces(harness.settings.data_path / "workspaces").src(handle.id)
    assert (src / "slugs.py").is_file()


async def test_an_invalid_request_fails_the_run_naming_the_field(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start(
            "CodeGenerationWorkflow",
            {"project": "Not A Name", "prompt": "a slugify helper", "requested_by": "alice"},
            prefix="codegen",
        )
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    assert "project" in str(info.value.cause)
    assert "pattern" in str(info.value.cause)


async def test_code_generation_failure_cleans_up(harness: Harness) -> None:
    async with harness.worker(failing("codegen.fingerprint_code")):
        handle = await harness.start(
            "CodeGenerationWorkflow",
            {"project": "slugs", "prompt": "a slugify helper", "requested_by": "alice"},
            prefix="codegen",
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)
    assert view.stages["fingerprint"] == "failed"
    assert [(c.step, c.outcome) for c in view.compensations] == [("cleanup_code", "completed")]
    src = Workspaces(harness.settings.data_path / "workspaces").src(handle.id)
    assert not any(src.glob("*.py"))


async def test_infra_provisioning_on_its_own(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start(
            "InfraProvisionWorkflow",
            {"project": harness.project, "requested_by": "alice", "resources": RESOURCES},
            prefix="infra",
        )
        result = await handle.result()
    assert result.status == "succeeded"
    assert (harness.infra_dir("cache")).is_dir()
    assert await stream_exists(harness.settings.nats_url, harness.stream("jobs"))


async def test_infra_high_impact_waits_for_the_gate(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start(
            "InfraProvisionWorkflow",
            {"project": harness.project, "requested_by": "alice", "environment": "prod", "resources": RESOURCES},
            prefix="infra",
        )
        view = await wait_for_gate(handle, "infra")
        assert view.stages["provision_infra"] == "awaiting_review"
        assert not (harness.infra_dir("cache", "prod")).exists()
        await handle.signal("review", ReviewDecision(gate="infra", reviewer="bob", approved=True))
        result = await handle.result()
    assert result.status == "succeeded"
    assert (harness.infra_dir("cache", "prod")).is_dir()


async def test_infra_provision_failure_destroys_what_was_provisioned(harness: Harness) -> None:
    provision_for_real = harness.agents.infra.provision

    @activity.defn(name="infra.provision")
    async def half_applied(plan: InfraPlan) -> None:
        await provision_for_real(plan)  # the resources really exist, then the step fails
        raise ApplicationError("connection lost after provisioning", non_retryable=True)

    async with harness.worker(half_applied):
        handle = await harness.start(
            "InfraProvisionWorkflow",
            {"project": harness.project, "requested_by": "alice", "resources": RESOURCES},
            prefix="infra",
        )
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        view = await status(handle)
    assert isinstance(info.value.cause, ApplicationError)
    assert info.value.cause.type == "PipelineFailed"
    assert [(c.step, c.outcome) for c in view.compensations] == [("destroy_infra", "completed")]
    assert not (harness.infra_dir("cache")).exists()
    assert not await stream_exists(harness.settings.nats_url, harness.stream("jobs"))
