"""QTest: tests for the generated code, run by pytest with coverage inside the sandbox."""

from __future__ import annotations

import ast
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from prometheus_client import Counter, Histogram
from temporalio import activity

from agents.codegen import MODEL_PROVIDER, OFFLINE_PROVIDER, FilesReply, PatternLibrary, checked_files, remove_dir
from agents.errors import INVALID_REQUEST, TOOL_FAILURE, failure
from agents.models import (
    CleanupResult,
    ExecuteTestsInput,
    GeneratedTests,
    GenerateTestsInput,
    RunRef,
    TestReport,
)
from agents.mutation import DRIVER as MUTATION_DRIVER
from agents.mutation import mutants
from agents.sandbox import Sandbox
from agents.workspace import Workspaces, file_record, files_under, safe_join

if TYPE_CHECKING:
    from agents.llm import LLMGateway

TEST_SYSTEM_PROMPT = (
    "You are QTest, writing pytest tests that check behaviour, not just that code runs. "
    "Standard library and pytest only, no network, no sleeps. Reply with JSON only."
)

TEST_RUNS = Counter("quantum_agent_test_runs_total", "Sandboxed test runs by outcome", ["outcome"])
TEST_SECONDS = Histogram("quantum_agent_test_run_seconds", "Wall-clock time of a sandboxed test run")

PYTEST_INI = "[pytest]\naddopts = -p no:cacheprovider\n"


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
        """Write tests for the run's code: from the model when one is configured, else the pattern's own tests."""
        if self.llm is not None:
            files, provider = await self._ask_model(inp), MODEL_PROVIDER
        else:
            if inp.pattern is None:
                raise failure(INVALID_REQUEST, "the offline provider writes tests only for code from a pattern")
            pattern = self.patterns.get(inp.pattern)
            text = pattern.render(pattern.tests_template, module=inp.module, project=inp.module, prompt=inp.prompt)
            files, provider = {f"test_{inp.module}.py": text}, OFFLINE_PROVIDER
        tests_dir = self.workspaces.tests(inp.run_id)
        tests_dir.mkdir(parents=True, exist_ok=True)
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
        return GeneratedTests(run_id=inp.run_id, files=records, provider=provider, test_count=count)

    async def _ask_model(self, inp: GenerateTestsInput) -> dict[str, str]:
        assert self.llm is not None
        src = self.workspaces.src(inp.run_id)
        code = "\n\n".join(f"# file {p.relative_to(src)}\n{p.read_text()}" for p in files_under(src))
        user = (
            f"The request was: {inp.prompt}\n\nWrite pytest tests for the module `{inp.module}` below. Test its "
            "behaviour precisely (they must fail if the code is broken), cover every branch, no network. "
            f"Name the files test_*.py.\n\n```python\n{code[:12000]}\n```"
        )
        completion = await self.llm.complete_json(system=TEST_SYSTEM_PROMPT, user=user, schema=FilesReply)
        files = checked_files(completion.value)
        if not all(Path(rel).name.startswith("test_") for rel in files):
            raise failure(INVALID_REQUEST, f"the model named test files {sorted(files)}; they must be test_*.py")
        return files

    @activity.defn(name="testgen.execute_tests")
    async def execute_tests(self, inp: ExecuteTestsInput) -> TestReport:
        """Run the tests under pytest + coverage in the sandbox; report counts, coverage and the JUnit file.

        Failing tests are a result, not an error: the workflow applies the test policy. Only a run that produced
        no report at all (and did not time out) is a ``ToolFailure``.
        """
        root = self.workspaces.for_run(inp.run_id)
        if not (root / "tests").is_dir():
            raise failure(INVALID_REQUEST, f"no tests to run for {inp.run_id}")
        reports = root / "reports"
        if reports.exists():
            shutil.rmtree(reports)
        reports.mkdir(parents=True)
        (root / "pytest.ini").write_text(PYTEST_INI)
        inside = self.sandbox.workdir(root)
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-c",
            f"{inside}/pytest.ini",
            "--rootdir",
            inside,
            f"--cov={inp.module}",
            f"--cov-report=json:{inside}/reports/coverage.json",
            f"--junitxml={inside}/reports/junit.xml",
            f"{inside}/tests",
        ]
        env = {"PYTHONPATH": f"{inside}/src", "COVERAGE_FILE": f"{inside}/reports/.coverage"}
        started = time.monotonic()
        result = await self.sandbox.run(argv, workspace=root, timeout=inp.timeout_seconds, env=env)
        duration = time.monotonic() - started
        TEST_SECONDS.observe(duration)
        output = (result.stdout + result.stderr)[-4000:]
        junit = reports / "junit.xml"
        if not junit.is_file():
            if result.timed_out:
                TEST_RUNS.labels("timed_out").inc()
                return TestReport(
                    passed=0,
                    failed=0,
                    errors=1,
                    coverage=0.0,
                    duration_seconds=round(duration, 3),
                    junit_report="",
                    isolation=result.isolation,
                    timed_out=True,
                    output_tail=output,
                )
            TEST_RUNS.labels("no_report").inc()
            raise failure(TOOL_FAILURE, f"pytest produced no report (exit {result.returncode}): {output[-800:]}")
        counts = _junit_counts(junit)
        coverage = _coverage_percent(reports / "coverage.json")
        passed = counts["failed"] + counts["errors"] == 0 and not result.timed_out
        TEST_RUNS.labels("passed" if passed else "failed").inc()
        report = TestReport(
            **counts,
            coverage=coverage,
            duration_seconds=round(duration, 3),
            junit_report=str(junit),
            isolation=result.isolation,
            timed_out=result.timed_out,
            output_tail=output,
        )
        if passed and inp.mutants:
            report = await self._mutation_test(root, inp, report)
        return report

    async def _mutation_test(self, root: Path, inp: ExecuteTestsInput, report: TestReport) -> TestReport:
        """Run the passing tests against a few mutants of the module; the share they catch is the score."""
        module = root / "src" / f"{inp.module}.py"
        found = mutants(module.read_text(), inp.mutants) if module.is_file() else []
        if not found:
            return report
        folder = root / "mutants"
        shutil.rmtree(folder, ignore_errors=True)
        for index, mutant in enumerate(found):
            (folder / f"m{index}").mkdir(parents=True)
            (folder / f"m{index}" / f"{inp.module}.py").write_text(mutant.source)
        (folder / "run.py").write_text(MUTATION_DRIVER)
        inside = self.sandbox.workdir(root)
        try:
            result = await self.sandbox.run(
                [sys.executable, f"{inside}/mutants/run.py"], workspace=root, timeout=inp.timeout_seconds
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
        if not lines:
            activity.logger.warning("mutation run gave no result: %s", (result.stdout + result.stderr)[-500:])
            return report
        outcomes = json.loads(lines[-1])
        killed = [o for o in outcomes if o["killed"]]
        surviving = [found[int(o["mutant"][1:])].description for o in outcomes if not o["killed"]]
        return report.model_copy(
            update={
                "mutants_total": len(outcomes),
                "mutants_killed": len(killed),
                "mutation_score": round(len(killed) / len(outcomes), 3) if outcomes else None,
                "surviving_mutants": surviving,
            }
        )

    @activity.defn(name="testgen.cleanup_tests")
    async def cleanup_tests(self, ref: RunRef) -> CleanupResult:
        """Remove the run's tests and reports (compensation); nothing to remove is fine."""
        root = self.workspaces.for_run(ref.run_id)
        removed = remove_dir(root / "tests").removed + remove_dir(root / "reports").removed
        (root / "pytest.ini").unlink(missing_ok=True)
        return CleanupResult(removed=removed)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.generate_tests, self.execute_tests, self.cleanup_tests]


def _junit_counts(path: Path) -> dict[str, int]:
    tree = ElementTree.parse(path)
    suites = [tree.getroot()] if tree.getroot().tag == "testsuite" else tree.getroot().findall("testsuite")
    total = failed = errors = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0))
        errors += int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return {"passed": total - failed - errors - skipped, "failed": failed, "errors": errors, "skipped": skipped}


def _coverage_percent(path: Path) -> float:
    if not path.is_file():
        return 0.0
    data = json.loads(path.read_text())
    return float(data.get("totals", {}).get("percent_covered", 0.0))
