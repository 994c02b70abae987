"""``CodeGenerationWorkflow``: parse and validate the request, generate, validate the code, fingerprint it.

The steps are also used by the pipeline saga's ``generate_code`` stage.
"""

from __future__ import annotations

import pydantic
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from agents.codegen import OFFLINE_PROVIDER, CodegenAgent
    from agents.models import Fingerprint, GenerateCodeInput, GeneratedCode, RunRef
    from events.models import ApprovalPolicy, CodeRequest, ReviewDecision
    from workflows import presets
    from workflows.models import CODEGEN_STAGES, PipelineResult, RunStatusView
    from workflows.saga import Run


async def generate(run: Run, inp: GenerateCodeInput, *, compensate: bool = True) -> GeneratedCode:
    """Generate code, after registering ``cleanup_code`` (once per run: ``compensate`` is False on a repair).

    The compensation is pushed before the step because writing files can half-apply; cleaning up a run that wrote
    nothing is a no-op.
    """
    ref = RunRef(run_id=inp.run_id)
    if compensate:
        run.on_failure(
            "cleanup_code",
            lambda: workflow.execute_activity_method(CodegenAgent.cleanup_code, ref, **presets.COMPENSATION),
        )
    code: GeneratedCode = await workflow.execute_activity_method(
        CodegenAgent.generate_code, inp, **presets.stage(presets.QUICK)
    )
    run.view.outputs.update(provider=code.provider, model=code.model, pattern=code.pattern, module=code.module)
    if code.pattern is not None and code.provider == OFFLINE_PROVIDER:
        run.view.outputs.update(pattern_score=code.pattern_score, runner_up=code.runner_up)
    return code


async def validate(run: Run, run_id: str, *, stage: str) -> None:
    """Check the generated files (paths, syntax); stop the run naming every problem."""
    result = await workflow.execute_activity_method(
        CodegenAgent.validate_code, RunRef(run_id=run_id), **presets.stage(presets.QUICK)
    )
    if not result.ok:
        raise run.fail_stage(stage, "; ".join(result.errors) or "generated code is invalid")


async def fingerprint(run: Run, run_id: str) -> Fingerprint:
    result: Fingerprint = await workflow.execute_activity_method(
        CodegenAgent.fingerprint_code, RunRef(run_id=run_id), **presets.stage(presets.QUICK)
    )
    run.view.outputs.update(release=result.digest, files=len(result.files))
    return result


async def completed() -> None:
    """A stage with no activity of its own (its work happened when the input was decoded)."""


@workflow.defn(name="CodeGenerationWorkflow", failure_exception_types=[pydantic.ValidationError])
class CodeGenerationWorkflow:
    """Generate code for one request on its own (event type ``quantum.code.requested``)."""

    @workflow.init
    def __init__(self, request: CodeRequest) -> None:
        view = RunStatusView(
            pipeline_id=workflow.info().workflow_id,
            workflow="CodeGenerationWorkflow",
            stages=dict.fromkeys(CODEGEN_STAGES, "pending"),
        )
        self._run = Run(view, policy=ApprovalPolicy(), requester=request.requested_by, project=request.project)

    @workflow.run
    async def run(self, request: CodeRequest) -> PipelineResult:
        return await self._run.execute(lambda: self._body(request))

    async def _body(self, request: CodeRequest) -> PipelineResult:
        run = self._run
        run_id = workflow.info().workflow_id
        await run.stage("validate_request", completed)
        inp = GenerateCodeInput(
            run_id=run_id,
            project=request.project,
            prompt=request.prompt,
            language=request.language,
            source=dict(request.source),
        )
        await run.stage("generate_code", lambda: generate(run, inp))
        await run.stage("validate_code", lambda: validate(run, run_id, stage="validate_code"))
        await run.stage("fingerprint", lambda: fingerprint(run, run_id))
        return PipelineResult(pipeline_id=run_id, status="succeeded", outputs=dict(run.view.outputs))

    @workflow.signal(name="review")
    def review(self, decision: ReviewDecision) -> None:
        """Code generation has no gates: every review is refused and recorded."""
        self._run.review(decision)

    @workflow.query(name="status")
    def status(self) -> RunStatusView:
        return self._run.view
