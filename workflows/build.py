"""The build: code and tests are written, run in the sandbox against the request's acceptance checks, and, when a
model wrote them, repaired from the failure, up to the request's ``max_attempts``.

Each attempt is its own activities (generate, validate, fingerprint, write tests, run them), so a worker that dies
mid-run resumes at the attempt it was on. The offline provider writes once: the same request gives the same
pattern, so another attempt could only repeat the failure. Deterministic code only.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial

from temporalio import workflow
from temporalio.exceptions import FailureError, is_cancelled_exception

from workflows.patches import REMEMBER_PATCH, REPAIR_PATCH, taken

with workflow.unsafe.imports_passed_through():
    from agents.codegen import MODEL_PROVIDER, OFFLINE_PROVIDER, CodegenAgent
    from agents.models import (
        Acceptance,
        AcceptanceReport,
        ExecuteTestsInput,
        Fingerprint,
        GenerateCodeInput,
        GeneratedCode,
        GenerateTestsInput,
        ModelUsage,
        RememberInput,
        RunRef,
        TestReport,
    )
    from agents.testgen import TestgenAgent
    from events.models import CodeRequest, PipelineRequest
    from workflows import presets
    from workflows.models import MAX_ERROR_CHARS, AttemptRecord, clip
    from workflows.saga import Run, RunStopped, failure_message

MAX_ATTEMPT_ERROR_CHARS = 500
MAX_FEEDBACK_OUTPUT_CHARS = 3000
MAX_FEEDBACK_CHARS = 6000


class Build:
    """One run's build: the attempts so far, what they used, and the last test report."""

    def __init__(self, run: Run, request: PipelineRequest | CodeRequest, run_id: str) -> None:
        self.run = run
        self.request = request
        self.run_id = run_id
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.report: TestReport | None = None
        self._attempt_usage = ModelUsage()

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    async def build(self) -> GeneratedCode:
        """Attempt after attempt until the code passes every check, or no attempt is left: the last failure stops
        the run (and so compensates)."""
        run, attempt, feedback = self.run, 1, ""
        while True:
            self._attempt_usage = ModelUsage()
            code = await run.stage("generate_code", partial(self._generate_code, attempt, feedback), attempt=attempt)
            await run.stage("generate_tests", partial(self._generate_tests, code, attempt, feedback), attempt=attempt)
            try:
                await run.stage("execute_tests", partial(self._execute_tests, code), attempt=attempt)
            except RunStopped as stopped:
                self._record(attempt, code, stopped.message)
                if not self._may_repair(stopped, code, attempt):
                    raise self._final(stopped, code, attempt) from None
                feedback = self._feedback(stopped.message)
                attempt += 1
                continue
            self._record(attempt, code, None)
            return code

    # --- one attempt -------------------------------------------------------------------------------------------

    async def _generate_code(self, attempt: int, feedback: str) -> GeneratedCode:
        request = self.request
        inp = GenerateCodeInput(
            run_id=self.run_id,
            project=request.project,
            prompt=request.prompt,
            language=request.language,
            source=dict(request.source),
            required_names=self._names(),
            attempt=attempt,
            feedback=feedback,
            max_tokens=self._remaining(),
            specification=self._specification(),
        )
        code = await generate(self.run, inp, compensate=attempt == 1)
        self._spend("generate_code", code.usage)
        await validate(self.run, self.run_id, stage="generate_code")
        await fingerprint(self.run, self.run_id)
        return code

    async def _generate_tests(self, code: GeneratedCode, attempt: int, feedback: str) -> None:
        ref = RunRef(run_id=self.run_id)
        if attempt == 1:
            self.run.on_failure(
                "cleanup_tests",
                lambda: workflow.execute_activity_method(TestgenAgent.cleanup_tests, ref, **presets.COMPENSATION),
            )
        inp = GenerateTestsInput(
            run_id=self.run_id,
            module=code.module,
            prompt=self.request.prompt,
            pattern=code.pattern,
            attempt=attempt,
            feedback=feedback,
            max_tokens=self._remaining(),
        )
        tests = await workflow.execute_activity_method(TestgenAgent.generate_tests, inp, **presets.stage(presets.QUICK))
        self.run.view.outputs["tests_generated"] = tests.test_count
        self._spend("generate_tests", tests.usage)

    async def _execute_tests(self, code: GeneratedCode) -> None:
        request, run = self.request, self.run
        acceptance = None
        if request.acceptance is not None:  # the same model on the agents' side of the layers
            acceptance = Acceptance.model_validate(request.acceptance.model_dump(mode="json"))
        inp = ExecuteTestsInput(
            run_id=code.run_id,
            module=code.module,
            mutants=request.test_policy.mutants,
            min_mutation_score=request.test_policy.min_mutation_score,
            acceptance=acceptance,
        )
        report = await workflow.execute_activity_method(TestgenAgent.execute_tests, inp, **presets.stage(presets.TOOL))
        self.report = report
        run.view.outputs.update(
            tests_passed=report.passed,
            tests_failed=report.failed + report.errors,
            coverage=round(report.coverage, 1),
            isolation=report.isolation,
        )
        if report.acceptance is not None:
            self._check_acceptance(report.acceptance)
        if report.problems:
            raise run.fail_stage("execute_tests", "the results cannot be trusted: " + "; ".join(report.problems))
        if report.timed_out:
            raise run.fail_stage("execute_tests", "the tests did not finish within their time limit", repairable=True)
        if report.failed or report.errors:
            raise run.fail_stage(
                "execute_tests", f"{report.failed} tests failed and {report.errors} errored", repairable=True
            )
        if report.passed == 0:
            raise run.fail_stage("execute_tests", "no test ran", repairable=True)
        minimum = request.test_policy.min_coverage
        if report.coverage < minimum:
            raise run.fail_stage(
                "execute_tests",
                f"line coverage {report.coverage:.1f}% is below the policy's {minimum:g}%",
                repairable=True,
            )
        score, required = report.mutation_score, request.test_policy.min_mutation_score
        if score is not None:
            run.view.outputs["mutation_score"] = score
            if score < required:
                raise run.fail_stage(
                    "execute_tests",
                    f"the tests caught {report.mutants_killed} of {report.mutants_total} mutants ({score:.0%}), "
                    f"below the policy's {required:.0%}; not caught: {'; '.join(report.surviving_mutants)}",
                    repairable=True,
                )

    def _check_acceptance(self, report: AcceptanceReport) -> None:
        """The request is the specification: any acceptance failure fails the stage, naming the first examples."""
        run = self.run
        run.view.outputs.update(acceptance_passed=report.passed, acceptance_total=report.total)
        if report.problems:
            raise run.fail_stage(
                "execute_tests", "the acceptance results cannot be trusted: " + "; ".join(report.problems)
            )
        if report.timed_out:
            raise run.fail_stage(
                "execute_tests", "the acceptance checks did not finish within their time limit", repairable=True
            )
        if report.failed:
            first = report.failures[:3]
            more = f"; and {report.failed - len(first)} more" if report.failed > len(first) else ""
            raise run.fail_stage(
                "execute_tests",
                f"{report.failed} of {report.total} acceptance checks failed: {'; '.join(first)}{more}",
                repairable=True,
            )

    # --- between attempts --------------------------------------------------------------------------------------

    def _may_repair(self, stopped: RunStopped, code: GeneratedCode, attempt: int) -> bool:
        if not stopped.repairable or code.provider != MODEL_PROVIDER or attempt >= self.request.max_attempts:
            return False
        budget = self.request.max_tokens
        if budget is not None and self.tokens >= budget:
            return False
        return taken(REPAIR_PATCH)

    def _final(self, stopped: RunStopped, code: GeneratedCode, attempt: int) -> RunStopped:
        """The failure that ends the build, saying why no further attempt was made."""
        if code.provider != MODEL_PROVIDER or not stopped.repairable:
            return stopped
        budget = self.request.max_tokens
        if attempt < self.request.max_attempts and budget is not None and self.tokens >= budget:
            why = f"no further attempt: the run's token budget of {budget} is spent ({self.tokens} used)"
        else:
            why = f"after {attempt} of {self.request.max_attempts} attempts"
        return RunStopped(stopped.status, clip(f"{stopped.message} ({why})", MAX_ERROR_CHARS))

    def _feedback(self, message: str) -> str:
        """What the next attempt is told: the failure, the acceptance failures and the end of the test output."""
        parts = [message]
        report = self.report
        if report is not None:
            if report.acceptance is not None and report.acceptance.failures:
                parts.append("Acceptance checks that failed:\n" + "\n".join(report.acceptance.failures))
            if report.output_tail:
                parts.append("The end of the test output:\n" + report.output_tail[-MAX_FEEDBACK_OUTPUT_CHARS:])
        return clip("\n\n".join(parts), MAX_FEEDBACK_CHARS)

    def _spend(self, stage: str, usage: ModelUsage) -> None:
        """Count what a step used; past the request's token budget, the stage fails with that reason."""
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cost = round(self.cost + usage.cost, 6)
        attempt = self._attempt_usage
        self._attempt_usage = ModelUsage(
            prompt_tokens=attempt.prompt_tokens + usage.prompt_tokens,
            completion_tokens=attempt.completion_tokens + usage.completion_tokens,
            cost=round(attempt.cost + usage.cost, 6),
        )
        if self.tokens:
            self.run.view.outputs.update(tokens=self.tokens, cost=self.cost)
        budget = self.request.max_tokens
        if budget is not None and self.tokens > budget:
            raise self.run.fail_stage(stage, f"the run's token budget of {budget} is spent ({self.tokens} used)")

    def _record(self, attempt: int, code: GeneratedCode, error: str | None) -> None:
        usage = self._attempt_usage
        self.run.view.attempts.append(
            AttemptRecord(
                attempt=attempt,
                provider=code.provider,
                model=code.model,
                outcome="failed" if error else "passed",
                error=clip(error or "", MAX_ATTEMPT_ERROR_CHARS),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost=usage.cost,
            )
        )
        self.run.view.outputs["attempts"] = attempt

    def _remaining(self) -> int | None:
        budget = self.request.max_tokens
        return None if budget is None else max(1, budget - self.tokens)

    def _names(self) -> list[str]:
        acceptance = self.request.acceptance
        if acceptance is None:
            return []
        return list(dict.fromkeys(e.call for e in acceptance.examples if e.call))[:100]

    def _specification(self) -> str:
        acceptance = self.request.acceptance
        if acceptance is None:
            return ""
        return json.dumps(acceptance.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)


async def remember(run: Run, code: GeneratedCode, request: PipelineRequest) -> None:
    """Keep a model's generation in the pattern store once the whole run succeeded; a failure is a warning."""
    if code.provider != MODEL_PROVIDER or not taken(REMEMBER_PATCH):
        return
    inp = RememberInput(run_id=code.run_id, project=request.project, prompt=request.prompt, module=code.module)
    try:
        remembered = await workflow.execute_activity_method(
            CodegenAgent.remember_generation, inp, **presets.stage(presets.QUICK)
        )
    except FailureError as err:
        if is_cancelled_exception(err):
            raise asyncio.CancelledError(str(err)) from err
        run.warn(f"the generation was not kept in the pattern store: {failure_message(err)}")
        return
    run.view.outputs["remembered_as"] = remembered.name


# --- the steps of code generation, shared with CodeGenerationWorkflow ------------------------------------------


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
