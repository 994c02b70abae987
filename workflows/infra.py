"""``InfraProvisionWorkflow``: plan, the ``infra`` gate when the impact is HIGH, provision; destroy on failure.

The steps are also used by the pipeline saga's ``plan_infra`` and ``provision_infra`` stages. A request naming
resources of other projects (``from_project``) first provisions each of those projects as a child
``InfraProvisionWorkflow`` (with what that project last declared) and waits for it: a dependency chain.
"""

from __future__ import annotations

import pydantic
from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():  # shared by every run, not imported afresh for each
    import workflows.presets as presets
    from agents.errors import INVALID_REQUEST
    from agents.infra import InfraAgent
    from agents.models import DeclaredInput, InfraPlan, PlanInfraInput, ProvisionResult, ResourceSpec, RunRef
    from events.models import InfraRequest, InfraResource, ReviewDecision
    from workflows.models import INFRA_STAGES, PipelineResult, ReviewVerdict, RunStatusView
    from workflows.patches import PROJECT_CHAIN_PATCH, taken
    from workflows.reviews import digest_of
    from workflows.saga import Run


def plan_input(run_id: str, project: str, environment: str, resources: list[InfraResource]) -> PlanInfraInput:
    return PlanInfraInput(
        run_id=run_id,
        project=project,
        environment=environment,
        resources=[ResourceSpec.model_validate(r.model_dump()) for r in resources],
    )


CHAIN_MARK = ".chain."
MAX_CHAIN = 4


async def provision_dependencies(run: Run, inp: PlanInfraInput) -> None:
    """Provision each project whose resources ``inp`` names (``from_project``), as a child run, one after another.

    A child's id is its parent's with the chain of projects appended (``<id>.chain.<a>.<b>``), so a chain that
    comes back to a project already in it (a cycle) or grows longer than ``MAX_CHAIN`` is refused, naming it.
    """
    projects = list(dict.fromkeys(r.from_project for r in inp.resources if r.from_project is not None))
    if not projects or not taken(PROJECT_CHAIN_PATCH):
        return
    own_id = workflow.info().workflow_id
    _, marked, tail = own_id.partition(CHAIN_MARK)
    chain = tail.split(".") if marked else [inp.project]
    children: list[str] = []
    for project in projects:
        if project in chain:
            raise ApplicationError(
                f"project dependency cycle: {' -> '.join([*chain, project])}", type=INVALID_REQUEST, non_retryable=True
            )
        if len(chain) >= MAX_CHAIN:
            raise ApplicationError(
                f"project dependency chain {' -> '.join([*chain, project])} is longer than {MAX_CHAIN}",
                type=INVALID_REQUEST,
                non_retryable=True,
            )
        declared = await workflow.execute_activity_method(
            InfraAgent.declared, DeclaredInput(project=project, environment=inp.environment), **presets.QUICK
        )
        request = InfraRequest(
            project=project,
            requested_by=run.requester,
            environment=inp.environment,
            resources=[InfraResource.model_validate(spec.model_dump()) for spec in declared.resources],
            approval_policy=run.policy,
        )
        child_id = f"{own_id}.{project}" if marked else f"{own_id}{CHAIN_MARK}{inp.project}.{project}"
        await workflow.execute_child_workflow(InfraProvisionWorkflow.run, request, id=child_id)
        children.append(child_id)
    run.view.outputs["infra_dependencies"] = ", ".join(children)


async def plan(run: Run, inp: PlanInfraInput) -> InfraPlan:
    await provision_dependencies(run, inp)
    result: InfraPlan = await workflow.execute_activity_method(InfraAgent.plan, inp, **presets.stage(presets.QUICK))
    run.view.outputs.update(
        infra_impact=result.impact,
        infra_changes=", ".join(f"{c.action} {c.kind} {c.name}" for c in result.changes),
    )
    if result.references:
        run.view.outputs["infra_references"] = ", ".join(result.references)
    return result


async def gate_if_high(run: Run, infra_plan: InfraPlan) -> None:
    """A HIGH-impact plan waits at the ``infra`` gate for the quorum its policy asks."""
    if infra_plan.impact == "HIGH":
        await run.gate(
            "infra",
            "provision_infra",
            reason="; ".join(infra_plan.reasons) or "impact HIGH",
            digest=digest_of(infra_plan.model_dump(mode="json")),
        )


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

    @workflow.update(name="review")
    def review_update(self, decision: ReviewDecision) -> ReviewVerdict:
        """The review as an Update: refused by the validator (nothing recorded in the history, the caller sees the
        reason), or applied and answered with the verdict."""
        return self._run.review_update(decision)

    @review_update.validator
    def validate_review(self, decision: ReviewDecision) -> None:
        self._run.validate_review(decision)

    @workflow.query(name="status")
    def status(self) -> RunStatusView:
        return self._run.view
