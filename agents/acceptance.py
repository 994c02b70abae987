"""Acceptance: the request is the specification.

A request may carry acceptance examples (a call, an expression or an HTTP request, each with what it must give) and
acceptance tests (pytest text). They run against whatever code was generated, by a pattern or by a model, in a
sandbox run of their own, before and apart from the generated tests.

The scratch copy holds the code (``src/``) and ``acceptance/``: ``examples.json``, the fixed runner
(:mod:`agents.acceptance_runner`, one pytest test per example), a ``conftest.py`` giving the request's tests a
``module`` fixture, and the request's tests as ``test_request.py``. pytest writes a JUnit report there, beside the
code under test: it is hostile data, read without following links and with a bound, and it counts only when it
agrees with pytest's exit status (which the worker sees itself) and gives each example exactly one result. Each
failing test case is mapped back to its example by its name; what the example was and what it should have given
come from the worker's own copy of the request, and only what came back is taken from the report, as bounded text.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

from agents.models import (
    MAX_ACCEPTANCE_FAILURES,
    MAX_ACCEPTANCE_TEXT_CHARS,
    Acceptance,
    AcceptanceExample,
    AcceptanceReport,
)
from agents.pytest_runs import JunitCase, Reports, prepare_scratch, pytest_argv, read_reports, sandbox_env
from agents.sandbox import Sandbox, SandboxResult
from agents.workspace import Workspaces

RUNNER = Path(__file__).with_name("acceptance_runner.py")
ACCEPTANCE_DIR = "acceptance"
RUNNER_FILE = "test_acceptance_examples.py"
REQUEST_TESTS_FILE = "test_request.py"
RUNNER_CLASS = f"{ACCEPTANCE_DIR}.{RUNNER_FILE.removesuffix('.py')}"
EXAMPLE_SECONDS = 30
"""How long one example may take inside the sandbox before it fails as too slow (the whole run has its own limit)."""
MAX_SHOWN_CHARS = 160

CONFTEST = '''"""Fixtures for the request's acceptance tests."""

import importlib
import json
from pathlib import Path

import pytest


@pytest.fixture
def module():
    """The module under test."""
    spec = json.loads((Path(__file__).parent / "examples.json").read_text(encoding="utf-8"))
    return importlib.import_module(spec["module"])
'''

_EXAMPLE_CASE = re.compile(r"^test_example\[example-(\d{1,3})\]$")
_SPACES = re.compile(r"\s+")


async def run_acceptance(
    workspaces: Workspaces, sandbox: Sandbox, *, run_id: str, module: str, acceptance: Acceptance, timeout: float
) -> AcceptanceReport:
    """Run the request's acceptance examples and tests against the run's code in a fresh sandbox; the verdict.

    Failing is a result, not an error: the report says which examples failed and how, and ``problems`` says why the
    result cannot be trusted (a report missing, unreadable, contradicting the exit status, leaving examples out).
    """
    root = workspaces.claim(run_id)
    started = time.monotonic()
    with workspaces.scratch(run_id) as scratch:
        await asyncio.to_thread(_prepare, root, scratch, module, acceptance)
        result = await sandbox.run(
            pytest_argv(sandbox, scratch, ACCEPTANCE_DIR, junit=True, options=("--import-mode=importlib",)),
            workspace=scratch,
            timeout=timeout,
            env=sandbox_env(sandbox, scratch),
        )
        duration = time.monotonic() - started
        reports = await asyncio.to_thread(read_reports, scratch, coverage=False, cases=True)
    return verdict(acceptance, result, reports, duration)


def _prepare(root: Path, scratch: Path, module: str, acceptance: Acceptance) -> None:
    prepare_scratch(root, scratch)
    write_acceptance(scratch, module, acceptance)


def write_acceptance(scratch: Path, module: str, acceptance: Acceptance) -> None:
    """Write ``acceptance/`` (examples, the fixed runner, the fixture, the request's tests) into ``scratch``."""
    target = scratch / ACCEPTANCE_DIR
    target.mkdir()
    spec = {
        "module": module,
        "seconds": EXAMPLE_SECONDS,
        "examples": [example.model_dump(mode="json") for example in acceptance.examples],
    }
    (target / "examples.json").write_text(json.dumps(spec), encoding="utf-8")
    if acceptance.examples:
        (target / RUNNER_FILE).write_text(RUNNER.read_text(encoding="utf-8"), encoding="utf-8")
    (target / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    if acceptance.tests:
        (target / REQUEST_TESTS_FILE).write_text(acceptance.tests, encoding="utf-8")


def verdict(acceptance: Acceptance, result: SandboxResult, reports: Reports, duration: float) -> AcceptanceReport:
    """The acceptance report from what the sandbox run left: the exit status the worker saw is authoritative."""
    examples = acceptance.examples
    timing = {"duration_seconds": round(duration, 3)}
    if result.timed_out:
        return AcceptanceReport(total=len(examples), timed_out=True, **timing)
    problems = list(reports.problems)
    if reports.cases is None:
        problems.append(f"pytest (exit {result.returncode}) left no usable acceptance report")
        return AcceptanceReport(total=len(examples), problems=_bounded(problems), **timing)

    by_example: dict[int, JunitCase] = {}
    others: list[JunitCase] = []
    for case in reports.cases:
        match = _EXAMPLE_CASE.match(case.name) if case.classname == RUNNER_CLASS else None
        if match is None:
            others.append(case)
        elif int(match[1]) >= len(examples) or int(match[1]) in by_example:
            problems.append(f"the report gives a result for example {match[1]} that was not asked for or twice")
        else:
            by_example[int(match[1])] = case
    missing = [index for index in range(len(examples)) if index not in by_example]
    if missing:
        shown = ", ".join(str(index) for index in missing[:10]) + (", ..." if len(missing) > 10 else "")
        problems.append(f"the report gives no result for example {shown}")
    broken = [case for case in reports.cases if case.outcome in {"failed", "error"}]
    if result.returncode == 0 and broken:
        problems.append(f"pytest exited 0 but its report counts {len(broken)} failing acceptance checks")
    if result.returncode != 0 and not broken:
        problems.append(f"pytest exited {result.returncode} but its report says every acceptance check passed")

    passed, failures = 0, []
    for index, case in sorted(by_example.items()):
        if case.outcome == "passed":
            passed += 1
        else:
            failures.append(describe_failure(index, examples[index], case))
    for case in others:
        if case.outcome == "passed":
            passed += 1
        elif case.outcome != "skipped" or case.classname == RUNNER_CLASS:
            runner = RUNNER_CLASS in {case.classname, case.name}
            label = "the acceptance examples" if runner else f"request test {_text(case.name, 100)}"
            failures.append(f"{label}: {_reason(case)}")
    return AcceptanceReport(
        total=len(examples) + len(others),
        passed=passed,
        failed=len(failures),
        failures=[_text(failure, MAX_ACCEPTANCE_TEXT_CHARS) for failure in failures[:MAX_ACCEPTANCE_FAILURES]],
        problems=_bounded(problems),
        **timing,
    )


def describe_failure(index: int, example: AcceptanceExample, case: JunitCase) -> str:
    """``example 2: slugify('Hello World') returned 'hello_world', expected 'hello-world'``: which example and what
    it asked from the request, what came back from the report."""
    if case.outcome == "skipped":
        came = "did not run (skipped)"
    else:
        came = _reason(case)
    return f"example {index}: {describe_example(example)} {came}, expected {describe_expected(example)}"


def describe_example(example: AcceptanceExample) -> str:
    if example.call is not None:
        args = [_show(arg) for arg in example.args] + [f"{key}={_show(value)}" for key, value in example.kwargs.items()]
        return _clip(f"{example.call}({', '.join(args)})", MAX_SHOWN_CHARS)
    if example.expr is not None:
        return _clip(example.expr, MAX_SHOWN_CHARS)
    assert example.http is not None
    sent = f" with {_show(example.http.body)}" if "body" in example.http.model_fields_set else ""
    return _clip(f"{example.http.method} {example.http.path}{sent}", MAX_SHOWN_CHARS)


def describe_expected(example: AcceptanceExample) -> str:
    if example.http is not None:
        body = f" {_show(example.expect_json)}" if "expect_json" in example.model_fields_set else ""
        return f"{example.status}{body}"
    if example.raises is not None:
        return f"{example.raises} to be raised"
    return _show(example.expect)


def _reason(case: JunitCase) -> str:
    """What the report says went wrong with ``case``: its message (pytest's prefix dropped), or for a collection
    error the last ``E`` line of its text. Untrusted: made one line of printable text, bounded."""
    message = case.message.removeprefix("Failed: ")
    if message in {"", "collection failure"} or message.startswith("failed on "):
        lines = [line[1:].strip() for line in case.text.splitlines() if line.startswith("E ")]
        message = lines[-1] if lines else message or case.outcome
    return _text(message, 300)


def _show(value: object) -> str:
    return _clip(repr(value), MAX_SHOWN_CHARS // 2)


def _text(text: str, limit: int) -> str:
    """``text`` from the sandbox as one line of printable characters (anything else escaped), at most ``limit``."""
    flat = _SPACES.sub(" ", text).strip()
    return _clip("".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in flat[: limit * 2]), limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bounded(problems: list[str]) -> list[str]:
    return [_text(problem, MAX_ACCEPTANCE_TEXT_CHARS) for problem in problems[:MAX_ACCEPTANCE_FAILURES]]
