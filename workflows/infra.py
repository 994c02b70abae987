"""``InfraProvisionWorkflow``: plan, the ``infra`` gate when the impact is HIGH, provision; destroy on failure.

The steps are also used by the pipeline saga's ``plan_infra`` and ``provision_infra`` stages.
"""

from __future__ import annotations

import pydantic
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from agents.infra import InfraAgent
    from agents.models import InfraPlan, PlanInfraInput, ProvisionResult, ResourceSpec, RunRef
    from events.models import InfraRequest, InfraResource, ReviewDecision
    from workflows import presets
    from workflows.models import INFRA_STAGES, PipelineResult, RunStatusView
    from workflows.saga import Run


def plan_input(run_id: str, project: str, environment: str, resources: list[InfraResource]) -> PlanInfraInput:
    return PlanInfraInput(
        run_id=run_id,
        project=project,
        environment=environment,
        resources=[ResourceSpec.model_validate(r.model_dump()) for r in resources],
    )


async def plan(run: Run, inp: PlanInfraInput) -> InfraPlan:
    result: InfraPlan = await workflow.execute_activity_method(InfraAgent.plan, inp, **presets.stage(presets.QUICK))
    run.view.outputs.update(
        infra_impact=result.impact,
        infra_changes=", ".join(f"{c.action} {c.kind} {c.name}" for c in result.changes),
    )
    return result


async def gate_if_high(run: Run, infra_plan: InfraPlan) -> None:
    """A HIGH-impact plan waits at the ``infra`` gate for the quorum its policy asks."""
    if infra_plan.impact == "HIGH":
        await run.gate("infra", "provision_infra", reason="; ".join(infra_plan.reasons) or "impact HIGH")


async def provision(run: Run, infra_plan: InfraPlan) -> ProvisionResult:
    """Provision the plan, after registering ``destroy_infra`` (provisioning can half-apply)."""
    ref = RunRef(run_id=infra_plan.run_id)
    run.on_failure(
        "destroy_infra",
        lambda: workflow.execute_activity_method(InfraAgent.destroy, ref, **presets.COMPENSATION),
    )
    result: ProvisionResult = await workflow.execute_activity_method(
        InfraAgent.provision, infra_plan, **presets.stage(presets.INFRA)
    )
    run.view.outputs["infra_resources"] = ", ".join(r.address for r in result.resources)
    return result


@workflow.defn(name="InfraProvisionWorkflow", failure_exception_types=[pydantic.ValidationError])
class InfraProvisionWorkflow:
    """Provision infrastructure on its own (event type ``quantum.infra.requested``)."""

    @workflow.init
    def __init__(self, request: InfraRequest) -> None:
        view = RunStatusView(
            pipeline_id=workflow.info().workflow_id,
            workflow="InfraProvisionWorkflow",
            stages=dict.fromkeys(INFRA_STAGES, "pending"),
        )
        self._run = Run(
            view,
            policy=request.approval_policy,
            requester=request.requested_by,
            project=request.project,
            environment=request.environment,
        )

    @workflow.run
    async def run(self, request: InfraRequest) -> PipelineResult:
        return await self._run.execute(lambda: self._body(request))

    async def _body(self, request: InfraRequest) -> PipelineResult:
        run = self._run
        run_id = workflow.info().workflow_id
        inp = plan_input(run_id, request.project, request.environment, request.resources)
        infra_plan = await run.stage("plan_infra", lambda: plan(run, inp))
        await gate_if_high(run, infra_plan)
        await run.stage("provision_infra", lambda: provision(run, infra_plan))
        return PipelineResult(pipeline_id=run_id, status="succeeded", outputs=dict(run.view.outputs))

    @workflow.signal(name="review")
    def review(self, decision: ReviewDecision) -> None:
        self._run.review(decision)

    @workflow.query(name="status")
    def status(self) -> RunStatusView:
        return self._run.view
