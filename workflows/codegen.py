"""``CodeGenerationWorkflow``: parse and validate the request, generate, validate the code, fingerprint it.

The steps are also used by the pipeline saga's ``generate_code`` stage.
"""

from __future__ import annotations

import pydantic
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from agents.models import GenerateCodeInput
    from events.models import ApprovalPolicy, CodeRequest, ReviewDecision
    from workflows.build import Build, fingerprint, generate, validate
    from workflows.models import CODEGEN_STAGES, TESTED_CODEGEN_STAGES, PipelineResult, ReviewVerdict, RunStatusView
    from workflows.saga import Run


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
            stages=dict.fromkeys(TESTED_CODEGEN_STAGES if request.tested else CODEGEN_STAGES, "pending"),
        )
        self._run = Run(view, policy=ApprovalPolicy(), requester=request.requested_by, project=request.project)

    @workflow.run
    async def run(self, request: CodeRequest) -> PipelineResult:
        return await self._run.execute(lambda: self._body(request))

    async def _body(self, request: CodeRequest) -> PipelineResult:
        run = self._run
        run_id = workflow.info().workflow_id
        await run.stage("validate_request", completed)
        if request.tested:
            await Build(run, request, run_id).build()
            return PipelineResult(pipeline_id=run_id, status="succeeded", outputs=dict(run.view.outputs))
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
