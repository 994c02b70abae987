"""``DevSecOpsPipelineWorkflow``: the nine-stage saga of DESIGN.md, with review gates and compensations."""

from __future__ import annotations

import asyncio

import pydantic
from temporalio import workflow
from temporalio.exceptions import FailureError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():  # shared by every run, not imported afresh for each
    import workflows.infra as infra
    import workflows.presets as presets
    from agents.deploy import DeployAgent
    from agents.models import (
        Acceptance,
        DeployInput,
        Deployment,
        MonitoringInput,
        RecordReleaseInput,
        RunRef,
        ScanInput,
        ScanReport,
        VerifyInput,
    )
    from agents.security import SecurityAgent
    from agents.sre import SREAgent
    from events.models import PipelineRequest, ReviewDecision
    from workflows.build import Build, remember
    from workflows.models import PIPELINE_STAGES, PipelineResult, ReviewVerdict, RunStatusView
    from workflows.patches import RECORD_RELEASE_PATCH, taken
    from workflows.reviews import digest_of
    from workflows.saga import Run, failure_message


MAX_GATE_FINDINGS = 5


def security_gate_reason(report: ScanReport, gate_at: str) -> str:
    """Why the security gate opened: how many findings at or above ``gate_at``, how many are new since the last
    deployed release and how many it had that are fixed, then the worst few (new ones marked)."""
    count = report.at_or_above(gate_at)
    what = "critical findings" if gate_at == "CRITICAL" else f"findings at {gate_at.lower()} or above"
    reason = f"{count} {what}"
    if report.new_findings is not None:
        since = f"release {report.baseline_release[:12]}" if report.baseline_release else "no release deployed yet"
        reason += f" ({report.new_findings} new, {report.fixed_findings} fixed since {since})"
    ranks = ("CRITICAL", "HIGH", "MEDIUM", "LOW")
    gating = [f for f in report.findings if ranks.index(f.severity) <= ranks.index(gate_at)]
    gating.sort(key=lambda f: (f.baseline_state != "new", ranks.index(f.severity)))
    worst = [
        f"{f.rule_id} {f.file}:{f.line}" + (" [new]" if f.baseline_state == "new" else "")
        for f in gating[:MAX_GATE_FINDINGS]
    ]
    return f"{reason}: {', '.join(worst)}"


def security_digest(release: str, report: ScanReport) -> str:
    """What the security gate asks about: the release and the fingerprints of its findings."""
    prints = sorted(f.fingerprint or f"{f.rule_id}:{f.file}:{f.line}" for f in report.findings)
    return digest_of({"release": release, "findings": prints})


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

    async def _body(self, request: PipelineRequest) -> PipelineResult:
        run = self._run
        run_id = workflow.info().workflow_id
        ref = RunRef(run_id=run_id)

        code = await Build(run, request, run_id).build()
        await run.stage("security_scan", lambda: self._security_scan(ref, request))

        if request.infrastructure:
            inp = infra.plan_input(run_id, request.project, request.environment, request.infrastructure)
            infra_plan = await run.stage("plan_infra", lambda: infra.plan(run, inp))
            await infra.gate_if_high(run, infra_plan)
            await run.stage("provision_infra", lambda: infra.provision(run, infra_plan))
        else:
            run.skip("plan_infra")
            run.skip("provision_infra")

        if request.environment == "prod":
            await run.gate(
                "deploy", "deploy_application", reason="environment prod", digest=str(run.view.outputs["release"])
            )
        release = str(run.view.outputs["release"])
        deployment = await run.stage("deploy_application", lambda: self._deploy(ref, request, release, code.module))
        await run.stage("verify_deployment", lambda: self._verify(deployment, request))
        if taken(RECORD_RELEASE_PATCH):
            await self._record_release(ref, request, release)
        await self._setup_monitoring(ref, request, deployment)
        await remember(run, code, request)
        return PipelineResult(
            pipeline_id=run_id, status="succeeded", outputs=dict(run.view.outputs), warnings=list(run.view.warnings)
        )

    async def _security_scan(self, ref: RunRef, request: PipelineRequest) -> None:
        """Scan; findings at or above the request's ``security_policy.gate_at`` (default critical) open the
        ``security`` gate, whose reason says what is new since the last deployed release of the project and
        environment and what was fixed."""
        inp = ScanInput(run_id=ref.run_id, project=request.project, environment=request.environment)
        report = await workflow.execute_activity_method(SecurityAgent.scan, inp, **presets.stage(presets.TOOL))
        outputs = self._run.view.outputs
        outputs.update(findings=len(report.findings), criticals=report.criticals)
        outputs.update(
            findings_critical=report.criticals,
            findings_high=report.highs,
            findings_medium=report.mediums,
            findings_low=report.lows,
        )
        if report.new_findings is not None:
            outputs.update(new_findings=report.new_findings, fixed_findings=report.fixed_findings)
        if report.sarif:
            outputs["security_report"] = report.sarif
        gate_at = request.security_policy.gate_at.upper()
        if report.at_or_above(gate_at):
            await self._run.gate(
                "security",
                "security_scan",
                reason=security_gate_reason(report, gate_at),
                digest=security_digest(str(outputs.get("release", "")), report),
            )

    async def _record_release(self, ref: RunRef, request: PipelineRequest, release: str) -> None:
        """Keep this release's findings as the baseline of its project and environment. A failure is a warning:
        the next run is then compared with the release before."""
        inp = RecordReleaseInput(
            run_id=ref.run_id, project=request.project, environment=request.environment, release=release
        )
        try:
            await workflow.execute_activity_method(SecurityAgent.record_release, inp, **presets.QUICK)
        except FailureError as err:
            if is_cancelled_exception(err):
                raise asyncio.CancelledError(str(err)) from err
            self._run.warn(f"security.record_release failed: {failure_message(err)}")

    async def _deploy(self, ref: RunRef, request: PipelineRequest, release: str, module: str) -> Deployment:
        self._run.on_failure(
            "rollback_deployment",
            lambda: workflow.execute_activity_method(DeployAgent.rollback, ref, **presets.COMPENSATION),
        )
        inp = DeployInput(
            run_id=ref.run_id,
            project=request.project,
            environment=request.environment,
            release=release,
            module=module,
        )
        deployment: Deployment = await workflow.execute_activity_method(
            DeployAgent.deploy, inp, **presets.stage(presets.INFRA)
        )
        self._run.view.outputs["deployment_url"] = deployment.url
        return deployment

    async def _verify(self, deployment: Deployment, request: PipelineRequest) -> None:
        """The live release against the request's acceptance (the same activity and command as before; only its
        input carries more, so runs recorded before still replay)."""
        acceptance = None
        if request.acceptance is not None:  # the same model on the agents' side of the layers
            acceptance = Acceptance.model_validate(request.acceptance.model_dump(mode="json"))
        inp = VerifyInput(**deployment.model_dump(), acceptance=acceptance)
        result = await workflow.execute_activity_method(DeployAgent.verify, inp, **presets.stage(presets.QUICK))
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
        for warning in setup.warnings:  # e.g. promtool missing: the alert rules were written unchecked
            run.warn(f"setup_monitoring: {warning}")
        run.on_failure(
            "teardown_monitoring",
            lambda: workflow.execute_activity_method(SREAgent.teardown_monitoring, ref, **presets.COMPENSATION),
        )
        await run.succeeded("setup_monitoring")
