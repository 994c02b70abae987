"""QTest: tests for the generated code, run by pytest with coverage inside the sandbox."""

from __future__ import annotations

import ast
import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from temporalio import activity

from agents.acceptance import run_acceptance
from agents.codegen import MODEL_PROVIDER, OFFLINE_PROVIDER, FilesReply, checked_files, remove_dir
from agents.errors import INVALID_REQUEST, UNSAFE_ARTIFACT, failure
from agents.interface import MAX_INTERFACE_CHARS, public_interface
from agents.library import PatternLibrary
from agents.models import (
    CleanupResult,
    ExecuteTestsInput,
    GeneratedTests,
    GenerateTestsInput,
    ModelUsage,
    RunRef,
    TestReport,
)
from agents.mutation import mutants
from agents.pytest_runs import Reports, prepare_scratch, pytest_argv, read_reports, sandbox_env
from agents.sandbox import Sandbox, SandboxResult
from agents.workspace import Workspaces, file_record, files_under, remove_tree, safe_join

if TYPE_CHECKING:
    from agents.llm import LLMGateway

TEST_SYSTEM_PROMPT = (
    "You are QTest, writing pytest tests that check behaviour, not just that code runs. "
    "Standard library and pytest only, no network, no sleeps. Reply with JSON only."
)

TEST_RUNS = Counter("quantum_agent_test_runs_total", "Sandboxed test runs by outcome", ["outcome"])
TEST_SECONDS = Histogram("quantum_agent_test_run_seconds", "Wall-clock time of a sandboxed test run")

MAX_PROBLEMS = 10
MAX_PROBLEM_CHARS = 500
MUTANT_MIN_SECONDS = 20.0


class TestgenAgent:
    """QTest: writes tests for the run's code and runs them in the sandbox with coverage."""

    __test__ = False

    def __init__(
        self, workspaces: Workspaces, patterns: PatternLibrary, sandbox: Sandbox, llm: LLMGateway | None = None
    ) -> None:
        self.workspaces = workspaces
        self.patterns = patterns
        self.sandbox = sandbox
        self.llm = llm

    @activity.defn(name="testgen.generate_tests")
    async def generate_tests(self, inp: GenerateTestsInput) -> GeneratedTests:
        """Write tests for the run's code: from the model when one is configured, else the pattern's own tests.

        The tests directory starts empty each time, so a retry or a repair attempt leaves no test of an earlier one.
        """
        usage = ModelUsage()
        if self.llm is not None:
            files, usage = await self._ask_model(inp)
            provider = MODEL_PROVIDER
        else:
            if inp.pattern is None:
                raise failure(INVALID_REQUEST, "the offline provider writes tests only for code from a pattern")
            pattern = self.patterns.get(inp.pattern)
            text = pattern.render(pattern.tests_template, module=inp.module, project=inp.module, prompt=inp.prompt)
            files, provider = {f"test_{inp.module}.py": text}, OFFLINE_PROVIDER
        self.workspaces.claim(inp.run_id)
        tests_dir = self.workspaces.tests(inp.run_id)
        remove_tree(tests_dir)
        tests_dir.mkdir(parents=True)
        records, count = [], 0
        for rel, text in sorted(files.items()):
            path = safe_join(tests_dir, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            records.append(file_record(path, self.workspaces.for_run(inp.run_id)))
            try:
                tree = ast.parse(text)
            except SyntaxError as err:
                raise failure(INVALID_REQUEST, f"generated test file {rel} does not parse: {err}") from None
            count += sum(
                1
                for node in ast.walk(tree)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")
            )
        return GeneratedTests(run_id=inp.run_id, files=records, provider=provider, test_count=count, usage=usage)

    async def _ask_model(self, inp: GenerateTestsInput) -> tuple[dict[str, str], ModelUsage]:
        """Ask the model for tests written from the request and the module's public interface only, so that the
        tests check what was asked for and do not copy the implementation's bugs."""
        assert self.llm is not None
        interface = await asyncio.to_thread(self._interface, inp)
        user = (
            f"The request was: {inp.prompt}\n\nWrite pytest tests for the module `{inp.module}`, whose public "
            "interface is below (the implementation is not shown on purpose: test what the request asks for). "
            "Test behaviour precisely, so that the tests fail if the code is wrong, including edge cases and "
            f"errors the request names; no network, no sleeps. Import from `{inp.module}`. Name the files "
            f"test_*.py.\n\n```python\n{interface}\n```"
        )
        if inp.feedback:
            user += (
                f"\n\nThis is attempt {inp.attempt}. The previous code and tests failed:\n{inp.feedback}\n"
                "If a test was wrong about what the request asks, correct it; never weaken a test to match code."
            )
        completion = await self.llm.complete_json(
            system=TEST_SYSTEM_PROMPT, user=user, schema=FilesReply, max_tokens=inp.max_tokens
        )
        files = checked_files(completion.value)
        if not all(Path(rel).name.startswith("test_") for rel in files):
            raise failure(INVALID_REQUEST, f"the model named test files {sorted(files)}; they must be test_*.py")
        usage = ModelUsage(
            prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens, cost=completion.cost
        )
        return files, usage

    def _interface(self, inp: GenerateTestsInput) -> str:
        src = self.workspaces.src(inp.run_id)
        parts = []
        for path in files_under(src):
            text = public_interface(path.read_text(errors="replace"))
            parts.append(f"# file {path.relative_to(src).as_posix()}\n{text}")
        return "\n\n".join(parts)[:MAX_INTERFACE_CHARS]

    @activity.defn(name="testgen.execute_tests")
    async def execute_tests(self, inp: ExecuteTestsInput) -> TestReport:
        """Run the request's acceptance checks, if any, then the tests under pytest + coverage in the sandbox; report
        counts, coverage, the JUnit file and the acceptance verdict. Mutation testing is skipped when acceptance
        failed: the code is wrong whatever its tests catch.

        The sandbox gets a fresh scratch copy of the run's code and tests, never the run's own files. What the code
        under test leaves there is hostile: the JUnit and coverage reports are read without following links, with a
        size bound, and count only when they agree with pytest's exit status, which the worker sees itself. A report
        that is missing, unreadable or contradicts the exit status is a *problem*: the run cannot pass. Failing tests
        are a result, not an error: the workflow applies the test policy.
        """
        root = self.workspaces.claim(inp.run_id)
        if not files_under(root / "tests"):
            raise failure(INVALID_REQUEST, f"no tests to run for {inp.run_id}")
        acceptance = None
        if inp.acceptance is not None:
            acceptance = await run_acceptance(
                self.workspaces,
                self.sandbox,
                run_id=inp.run_id,
                module=inp.module,
                acceptance=inp.acceptance,
                timeout=inp.timeout_seconds,
            )
        started = time.monotonic()
        with self.workspaces.scratch(inp.run_id) as scratch:
            await asyncio.to_thread(self._prepare, root, scratch)
            result = await self.sandbox.run(
                self._pytest_argv(scratch, inp.module),
                workspace=scratch,
                timeout=inp.timeout_seconds,
                env=self._env(scratch),
            )
            duration = time.monotonic() - started
            reports = await asyncio.to_thread(read_reports, scratch)
        TEST_SECONDS.observe(duration)
        report = await asyncio.to_thread(self._verdict, root, inp, result, reports, duration)
        report = report.model_copy(update={"acceptance": acceptance})
        TEST_RUNS.labels(_outcome(report)).inc()
        green = report.passed and not report.problems and not report.failed and not report.errors
        if green and (acceptance is None or acceptance.ok) and inp.mutants:
            report = await self._mutation_test(root, inp, report)
        return report

    def _prepare(self, root: Path, scratch: Path) -> None:
        """Fill a fresh scratch directory with copies of the run's code and tests (links never copied)."""
        prepare_scratch(root, scratch, "tests")

    def _env(self, scratch: Path) -> dict[str, str]:
        return sandbox_env(self.sandbox, scratch)

    def _pytest_argv(self, scratch: Path, module: str, *, coverage: bool = True) -> list[str]:
        if coverage:
            return pytest_argv(self.sandbox, scratch, "tests", coverage_of=module, junit=True)
        return pytest_argv(self.sandbox, scratch, "tests", options=("-x",))

    def _verdict(
        self, root: Path, inp: ExecuteTestsInput, result: SandboxResult, reports: Reports, duration: float
    ) -> TestReport:
        output = (result.stdout + result.stderr)[-4000:]
        problems = [] if result.timed_out else list(reports.problems)
        counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        junit_path = ""
        if reports.junit is not None:
            counts = reports.junit
            kept = root / "reports"
            kept.mkdir(exist_ok=True)
            (kept / "junit.xml").write_bytes(reports.junit_bytes)
            junit_path = str(kept / "junit.xml")
            all_passed = counts["failed"] + counts["errors"] == 0 and counts["passed"] > 0
            if result.returncode == 0 and not all_passed:
                problems.append(f"pytest exited 0 but its report counts {counts}")
            if result.returncode != 0 and all_passed and not result.timed_out:
                problems.append(f"pytest exited {result.returncode} but its report says every test passed")
        elif not result.timed_out:
            problems.append(f"pytest (exit {result.returncode}) left no usable report")
        if result.timed_out:
            counts = {**counts, "errors": max(1, counts["errors"])}
        return TestReport(
            **counts,
            coverage=reports.coverage if reports.coverage is not None else 0.0,
            duration_seconds=round(duration, 3),
            junit_report=junit_path,
            isolation=result.isolation,
            timed_out=result.timed_out,
            output_tail=output,
            problems=[p[:MAX_PROBLEM_CHARS] for p in problems[:MAX_PROBLEMS]],
        )

    async def _mutation_test(self, root: Path, inp: ExecuteTestsInput, report: TestReport) -> TestReport:
        """Run the passing tests against a few mutants of the module, each in a fresh sandbox (as many at once as
        there are CPUs); the share they catch is the score. A mutant is caught when pytest, watched by the worker
        itself, exits non-zero or times out.

        When mutants were asked for and none could be run, the report says so as a problem when the policy needs a
        score: a policy check whose input is missing fails.
        """
        module = root / "src" / f"{inp.module}.py"
        found = mutants(module.read_text(), inp.mutants) if module.is_file() and not module.is_symlink() else []
        if not found:
            note = f"mutation testing found nothing to mutate in {inp.module}.py"
            if inp.min_mutation_score > 0:
                return report.model_copy(update={"problems": [*report.problems, note]})
            return report
        limit = min(inp.timeout_seconds, max(MUTANT_MIN_SECONDS, 3 * report.duration_seconds))
        slots = asyncio.Semaphore(max(1, os.cpu_count() or 1))

        async def caught(source: str) -> bool:
            async with slots:
                with self.workspaces.scratch(inp.run_id) as scratch:
                    await asyncio.to_thread(self._prepare, root, scratch)
                    (scratch / "src" / f"{inp.module}.py").write_text(source)
                    result = await self.sandbox.run(
                        self._pytest_argv(scratch, inp.module, coverage=False),
                        workspace=scratch,
                        timeout=limit,
                        env=self._env(scratch),
                    )
            return result.timed_out or result.returncode != 0

        verdicts = await asyncio.gather(*(caught(mutant.source) for mutant in found))
        killed = sum(verdicts)
        surviving = [mutant.description for mutant, was_caught in zip(found, verdicts, strict=True) if not was_caught]
        return report.model_copy(
            update={
                "mutants_total": len(found),
                "mutants_killed": killed,
                "mutation_score": round(killed / len(found), 3),
                "surviving_mutants": surviving,
            }
        )

    @activity.defn(name="testgen.cleanup_tests")
    async def cleanup_tests(self, ref: RunRef) -> CleanupResult:
        """Remove the run's tests and reports (compensation); nothing to remove is fine."""
        if not self.workspaces.for_run(ref.run_id).exists():
            return CleanupResult(removed=[])
        if not self.workspaces.owned_by(ref.run_id):
            raise failure(UNSAFE_ARTIFACT, f"the workspace of {ref.run_id} is not this run's: nothing removed")
        root = self.workspaces.for_run(ref.run_id)
        removed = remove_dir(root / "tests").removed + remove_dir(root / "reports").removed
        removed += self.workspaces.remove_scratch(ref.run_id)
        return CleanupResult(removed=removed)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.generate_tests, self.execute_tests, self.cleanup_tests]


def _outcome(report: TestReport) -> str:
    if report.timed_out:
        return "timed_out"
    if report.problems:
        return "untrusted"
    return "passed" if report.failed + report.errors == 0 and report.passed else "failed"
