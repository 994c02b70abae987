"""``DevSecOpsPipelineWorkflow``: the nine-stage saga of DESIGN.md, with review gates and compensations."""

from __future__ import annotations

import asyncio

import pydantic
from temporalio import workflow
from temporalio.exceptions import FailureError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from agents.deploy import DeployAgent
    from agents.models import (
        DeployInput,
        Deployment,
        MonitoringInput,
        RunRef,
        ScanInput,
    )
    from agents.security import SecurityAgent
    from agents.sre import SREAgent
    from events.models import PipelineRequest, ReviewDecision
    from workflows import infra, presets
    from workflows.build import Build, remember
    from workflows.models import PIPELINE_STAGES, PipelineResult, RunStatusView
    from workflows.saga import Run, failure_message


@workflow.defn(name="DevSecOpsPipelineWorkflow", failure_exception_types=[pydantic.ValidationError])
class DevSecOpsPipelineWorkflow:
    """Drive one request through code, tests, security, infrastructure, deployment and monitoring.

    Any failure, rejected or timed-out gate, or cancellation runs the compensations of what already happened,
    newest first. Gates: criticals open ``security``, a HIGH-impact plan opens ``infra``, ``prod`` opens ``deploy``.
    """

    @workflow.init
    def __init__(self, request: PipelineRequest) -> None:
        view = RunStatusView(
            pipeline_id=workflow.info().workflow_id,
            workflow="DevSecOpsPipelineWorkflow",
            stages=dict.fromkeys(PIPELINE_STAGES, "pending"),
        )
        self._run = Run(
            view,
            policy=request.approval_policy,
            requester=request.requested_by,
            project=request.project,
            environment=request.environment,
        )

    @workflow.run
    async def run(self, request: PipelineRequest) -> PipelineResult:
        return await self._run.execute(lambda: self._body(request))

    @workflow.signal(name="review")
    def review(self, decision: ReviewDecision) -> None:
        self._run.review(decision)

    @workflow.query(name="status")
    def status(self) -> RunStatusView:
        return self._run.view

    async def _body(self, request: PipelineRequest) -> PipelineResult:
        run = self._run
        run_id = workflow.info().workflow_id
        ref = RunRef(run_id=run_id)

        code = await Build(run, request, run_id).build()
        await run.stage("security_scan", lambda: self._security_scan(ref))

        if request.infrastructure:
            inp = infra.plan_input(run_id, request.project, request.environment, request.infrastructure)
            infra_plan = await run.stage("plan_infra", lambda: infra.plan(run, inp))
            await infra.gate_if_high(run, infra_plan)
            await run.stage("provision_infra", lambda: infra.provision(run, infra_plan))
        else:
            run.skip("plan_infra")
            run.skip("provision_infra")

        if request.environment == "prod":
            await run.gate("deploy", "deploy_application", reason="environment prod")
        release = str(run.view.outputs["release"])
        deployment = await run.stage("deploy_application", lambda: self._deploy(ref, request, release))
        await run.stage("verify_deployment", lambda: self._verify(deployment))
        await self._setup_monitoring(ref, request, deployment)
        await remember(run, code, request)
        return PipelineResult(
            pipeline_id=run_id, status="succeeded", outputs=dict(run.view.outputs), warnings=list(run.view.warnings)
        )

    async def _security_scan(self, ref: RunRef) -> None:
        report = await workflow.execute_activity_method(
            SecurityAgent.scan, ScanInput(run_id=ref.run_id), **presets.stage(presets.TOOL)
        )
        self._run.view.outputs.update(findings=len(report.findings), criticals=report.criticals)
        if report.criticals:
            worst = [f"{f.rule_id} {f.file}:{f.line}" for f in report.findings if f.critical][:5]
            await self._run.gate(
                "security", "security_scan", reason=f"{report.criticals} critical findings: {', '.join(worst)}"
            )

    async def _deploy(self, ref: RunRef, request: PipelineRequest, release: str) -> Deployment:
        self._run.on_failure(
            "rollback_deployment",
            lambda: workflow.execute_activity_method(DeployAgent.rollback, ref, **presets.COMPENSATION),
        )
        inp = DeployInput(run_id=ref.run_id, project=request.project, environment=request.environment, release=release)
        deployment: Deployment = await workflow.execute_activity_method(
            DeployAgent.deploy, inp, **presets.stage(presets.INFRA)
        )
        self._run.view.outputs["deployment_url"] = deployment.url
        return deployment

    async def _verify(self, deployment: Deployment) -> None:
        result = await workflow.execute_activity_method(DeployAgent.verify, deployment, **presets.stage(presets.QUICK))
        if not result.healthy or not result.release_matches:
            raise self._run.fail_stage("verify_deployment", result.detail or "the deployment is not healthy")

    async def _setup_monitoring(self, ref: RunRef, request: PipelineRequest, deployment: Deployment) -> None:
        """Non-critical: a failure is recorded as a warning and the run still succeeds."""
        run = self._run
        inp = MonitoringInput(
            run_id=ref.run_id, project=request.project, environment=request.environment, deployment_url=deployment.url
        )
        run.started("setup_monitoring")
        try:
            setup = await workflow.execute_activity_method(
                SREAgent.setup_monitoring, inp, **presets.stage(presets.QUICK)
            )
        except FailureError as err:
            if is_cancelled_exception(err):
                raise asyncio.CancelledError(str(err)) from err
            warning = f"setup_monitoring failed: {failure_message(err)}"
            run.warn(warning)
            run.view.outputs["monitoring"] = "failed"
            await run.failed("setup_monitoring", warning)
            return
        run.view.outputs["monitoring"] = setup.target
        run.on_failure(
            "teardown_monitoring",
            lambda: workflow.execute_activity_method(SREAgent.teardown_monitoring, ref, **presets.COMPENSATION),
        )
        await run.succeeded("setup_monitoring")
