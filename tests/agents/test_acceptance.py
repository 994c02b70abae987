"""Acceptance: the request is the specification. Its examples and tests run in the real sandbox against the code."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment
from typer.testing import CliRunner

import agents.acceptance
from agents import models as agent_models
from agents.acceptance import RUNNER_CLASS, run_acceptance, verdict
from agents.codegen import CodegenAgent
from agents.library import PatternLibrary
from agents.models import AcceptanceReport, ExecuteTestsInput, GenerateCodeInput, GenerateTestsInput, TestReport
from agents.pytest_runs import JunitCase, Reports
from agents.sandbox import Sandbox, SandboxResult
from agents.testgen import TestgenAgent
from agents.workspace import Workspaces
from events import models as event_models
from events.models import PipelineRequest
from quantum.cli import app
from quantum.requests import EXAMPLES, RequestError, describe_validation_error, load_model

env = ActivityEnvironment()
library = PatternLibrary()
SLUGIFY = "slugify article titles into URL slugs"
HTTP = "an HTTP JSON service with a health endpoint"
BOTH_MODELS = [event_models.Acceptance, agent_models.Acceptance]


@pytest.fixture
def workspaces(tmp_path: Path) -> Workspaces:
    return Workspaces(tmp_path / "workspaces")


async def generated(workspaces: Workspaces, prompt: str, *, hostile: str = "", tests: bool = False) -> tuple[str, str]:
    """A run whose code the offline provider wrote for ``prompt`` (``hostile`` appended to it): its id and module."""
    run_id = f"pipeline-{uuid.uuid4()}"
    code = await env.run(
        CodegenAgent(workspaces, library).generate_code,
        GenerateCodeInput(run_id=run_id, project="blog-posts", prompt=prompt),
    )
    if hostile:
        module = workspaces.src(run_id) / f"{code.module}.py"
        module.write_text(module.read_text() + "\n" + textwrap.dedent(hostile))
    if tests:
        tester = TestgenAgent(workspaces, library, Sandbox())
        inp = GenerateTestsInput(run_id=run_id, module=code.module, prompt=prompt, pattern=code.pattern)
        await env.run(tester.generate_tests, inp)
    return run_id, code.module


async def accept(workspaces: Workspaces, run_id: str, module: str, **acceptance: Any) -> AcceptanceReport:
    spec = agent_models.Acceptance.model_validate(acceptance)
    return await run_acceptance(workspaces, Sandbox(), run_id=run_id, module=module, acceptance=spec, timeout=120)


# --- examples and tests against the slugify pattern's code -----------------------------------------------------------


async def test_call_raises_and_expr_examples_name_the_example_that_failed(workspaces: Workspaces) -> None:
    run_id, module = await generated(workspaces, SLUGIFY)
    report = await accept(
        workspaces,
        run_id,
        module,
        examples=[
            {"call": "slugify", "args": ["Hello World"], "expect": "hello-world"},
            {"call": "slugify", "args": ["Hello World"], "expect": "hello_world"},
            {"call": "slugify", "args": ["title"], "kwargs": {"max_length": 0}, "raises": "ValueError"},
            {"call": "slugify", "args": ["title"], "raises": "ValueError"},
            {"expr": "unique_slug('Hello World', {'hello-world'})", "expect": "hello-world-2"},
            {"expr": "len(slugify('a b c'))", "expect": 3},
            {"call": "slugify", "args": ["x"], "kwargs": {"max_length": 0}, "raises": "KeyError"},
            {"call": "no_such_function", "expect": None},
        ],
    )
    assert (report.total, report.passed, report.failed) == (8, 3, 5), report
    assert report.problems == [] and not report.ok
    assert report.failures == [
        "example 1: slugify('Hello World') returned 'hello-world', expected 'hello_world'",
        "example 3: slugify('title') returned 'title', expected ValueError to be raised",
        "example 5: len(slugify('a b c')) returned 5, expected 3",
        "example 6: slugify('x', max_length=0) raised ValueError: max_length must be at least 1, expected KeyError "
        "to be raised",
        f"example 7: no_such_function() could not run: {module} has no no_such_function, expected None",
    ]


async def test_every_example_passing_is_ok(workspaces: Workspaces) -> None:
    run_id, module = await generated(workspaces, SLUGIFY)
    examples = json.loads((EXAMPLES / "acceptance.json").read_text())["acceptance"]
    report = await accept(workspaces, run_id, module, **examples)
    assert report.ok and report.failures == [] and report.problems == [], report
    assert report.total == report.passed == 6  # five examples and the request's test


async def test_request_tests_run_with_the_module_fixture_and_fail_by_name(workspaces: Workspaces) -> None:
    run_id, module = await generated(workspaces, SLUGIFY)
    tests = f"""
from {module} import slugify


def test_imports_the_module_by_name():
    assert slugify("A B") == "a-b"


def test_uses_the_fixture(module):
    assert module.slugify("A B") == "a_b"
"""
    report = await accept(workspaces, run_id, module, tests=tests)
    assert (report.total, report.passed, report.failed) == (2, 1, 1), report
    assert report.failures[0].startswith("request test test_uses_the_fixture: AssertionError: assert 'a-b' == 'a_b'")
    assert "\n" not in report.failures[0]


async def test_an_example_that_never_returns_fails_by_name(workspaces: Workspaces, monkeypatch: Any) -> None:
    monkeypatch.setattr(agents.acceptance, "EXAMPLE_SECONDS", 1)
    run_id, module = await generated(workspaces, SLUGIFY)
    report = await accept(
        workspaces,
        run_id,
        module,
        examples=[
            {"expr": "__import__('time').sleep(60)", "expect": None},
            {"call": "slugify", "args": ["Ok"], "expect": "ok"},
        ],
    )
    assert report.passed == 1 and not report.timed_out
    assert report.failures == ["example 0: __import__('time').sleep(60) did not finish within 1 s, expected None"]


# --- HTTP examples against the http_service pattern's code ---------------------------------------------------------


async def test_http_examples_run_against_the_modules_server(workspaces: Workspaces) -> None:
    run_id, module = await generated(workspaces, HTTP)
    report = await accept(
        workspaces,
        run_id,
        module,
        examples=[
            {"http": {"path": "/healthz"}, "status": 200, "expect_json": {"status": "ok", "service": "blog-posts"}},
            {"http": {"method": "PUT", "path": "/items/a1", "json": {"total": 12}}, "status": 201},
            {"http": {"path": "/items/a1"}, "expect_json": {"total": 12}},
            {"http": {"path": "/items/zz"}, "expect_json": {"total": 12}},
            {"http": {"method": "DELETE", "path": "/items/a1"}, "status": 204},
        ],
    )
    assert (report.total, report.passed, report.failed) == (5, 3, 2), report
    assert report.failures[0] == (
        "example 3: GET /items/zz answered 404 {'error': 'not found'}, expected 200 {'total': 12}"
    )
    assert report.failures[1].startswith("example 4: DELETE /items/a1 answered 501")
    assert report.failures[1].endswith(", expected 204")


async def test_an_http_example_needs_make_server(workspaces: Workspaces) -> None:
    run_id, module = await generated(workspaces, SLUGIFY)
    report = await accept(workspaces, run_id, module, examples=[{"http": {"path": "/healthz"}}])
    assert report.failures == [
        f"example 0: GET /healthz could not run: {module} has no make_server(port, host), expected 200"
    ]


# --- hostile code -------------------------------------------------------------------------------------------------


async def test_code_that_rewrites_its_report_to_claim_success_still_fails(workspaces: Workspaces) -> None:
    hostile = """
    import atexit as _atexit

    def _forge():
        junit = (
            '<testsuites><testsuite name="pytest" tests="1" failures="0" errors="0" skipped="0">'
            '<testcase classname="acceptance.test_acceptance_examples" name="test_example[example-0]"/>'
            '</testsuite></testsuites>'
        )
        open("/workspace/reports/junit.xml", "w").write(junit)

    _atexit.register(_forge)
    """
    run_id, module = await generated(workspaces, SLUGIFY, hostile=hostile)
    report = await accept(
        workspaces, run_id, module, examples=[{"call": "slugify", "args": ["Hello World"], "expect": "hello_world"}]
    )
    assert not report.ok
    assert report.problems == ["pytest exited 1 but its report says every acceptance check passed"], report


async def test_code_that_exits_0_with_an_empty_report_still_fails(workspaces: Workspaces) -> None:
    hostile = """
    import atexit as _atexit, os as _os

    def _forge():
        open("/workspace/reports/junit.xml", "w").write('<testsuite name="pytest" tests="0"/>')
        _os._exit(0)

    _atexit.register(_forge)
    """
    run_id, module = await generated(workspaces, SLUGIFY, hostile=hostile)
    report = await accept(
        workspaces, run_id, module, examples=[{"call": "slugify", "args": ["Hello World"], "expect": "hello_world"}]
    )
    assert not report.ok
    assert report.problems == ["the report gives no result for example 0"], report


def case(name: str, outcome: str = "passed", message: str = "", classname: str = RUNNER_CLASS) -> JunitCase:
    return JunitCase(classname, name, outcome, message)


def judged(
    cases: list[JunitCase] | None, returncode: int, examples: int = 2, problems: list[str] | None = None
) -> AcceptanceReport:
    spec = agent_models.Acceptance.model_validate(
        {"examples": [{"call": "f", "args": [i], "expect": i} for i in range(examples)]}
    )
    result = SandboxResult(returncode=returncode, stdout="", stderr="", timed_out=False, isolation="bwrap")
    return verdict(spec, result, Reports(cases=cases, problems=problems or []), 1.0)


def test_a_report_is_believed_only_when_it_agrees_with_the_exit_status() -> None:
    good = [case("test_example[example-0]"), case("test_example[example-1]")]
    assert judged(good, 0).ok
    assert judged(good, 1).problems == ["pytest exited 1 but its report says every acceptance check passed"]
    bad = [case("test_example[example-0]"), case("test_example[example-1]", "failed", "Failed: returned 2")]
    assert judged(bad, 0).problems == ["pytest exited 0 but its report counts 1 failing acceptance checks"]
    assert judged(bad, 1).failures == ["example 1: f(1) returned 2, expected 1"]
    doubled = [*good, case("test_example[example-1]"), case("test_example[example-7]")]
    assert len(judged(doubled, 0).problems) == 2
    assert judged(None, 1, problems=["JUnit report: reports/junit.xml is missing"]).problems == [
        "JUnit report: reports/junit.xml is missing",
        "pytest (exit 1) left no usable acceptance report",
    ]
    skipped = [case("test_example[example-0]"), case("test_example[example-1]", "skipped")]
    assert judged(skipped, 0).failures == ["example 1: f(1) did not run (skipped), expected 1"]


def test_what_comes_back_from_the_sandbox_is_bounded_one_line_text() -> None:
    message = "Failed: returned '" + "x" * 10_000 + "'\n\x1b[31m\u202e"
    failures = [case(f"test_example[example-{i}]", "failed", message) for i in range(30)]
    report = judged(failures, 1, examples=30)
    assert report.failed == 30 and len(report.failures) == 10
    assert all(len(f) <= 500 and "\n" not in f and "\x1b" not in f and "\u202e" not in f for f in report.failures)


# --- through the activity ------------------------------------------------------------------------------------------


async def test_execute_tests_reports_acceptance_beside_the_generated_tests(workspaces: Workspaces) -> None:
    run_id, module = await generated(workspaces, SLUGIFY, tests=True)
    tester = TestgenAgent(workspaces, library, Sandbox())
    failing = {"examples": [{"call": "slugify", "args": ["Hello World"], "expect": "hello_world"}]}
    report = await env.run(
        tester.execute_tests, ExecuteTestsInput(run_id=run_id, module=module, mutants=2, acceptance=failing)
    )
    assert report.acceptance is not None and report.acceptance.failed == 1
    assert report.passed > 0 and report.failed == 0 and report.coverage > 0  # the generated tests ran too
    assert report.mutation_score is None and report.mutants_total == 0  # skipped: the code is wrong anyway

    passing = {"examples": [{"call": "slugify", "args": ["Hello World"], "expect": "hello-world"}]}
    report = await env.run(
        tester.execute_tests, ExecuteTestsInput(run_id=run_id, module=module, mutants=2, acceptance=passing)
    )
    assert report.acceptance is not None and report.acceptance.ok and report.acceptance.passed == 1
    assert report.mutants_total == 2 and report.mutation_score is not None
    assert not list((workspaces.for_run(run_id) / "scratch").iterdir())  # every scratch copy is gone


# --- the models: bounds, errors that name what is wrong, one shape on both sides of the layers -----------------------

CALL = {"call": "slugify", "args": ["a"], "expect": "a"}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


BAD = [
    ({"examples": [CALL] * 101}, "examples", "at most 100 items"),
    ({"tests": "x = 1\n" * 11_000}, "tests", "at most 65536 characters"),
    ({"tests": "# é\n" * 15_000}, "tests", "bytes long, over the 65536 byte limit"),
    ({"tests": "def test_x(:\n    pass\n"}, "tests", "does not parse as Python: line 1"),
    ({"examples": [CALL, {"expr": "slugify(", "expect": 1}]}, "examples.1.expr", "does not parse as a Python exp"),
    ({"examples": [{"expr": "x" * 2001, "expect": 1}]}, "examples.0.expr", "at most 2000 characters"),
    ({"examples": [CALL, CALL, CALL, {**CALL, "raises": "ValueError"}]}, "examples.3", "expect or raises, not both"),
    ({"examples": [{"call": "slugify"}]}, "examples.0", "give expect (what it returns) or raises"),
    ({"examples": [{"expect": 1}]}, "examples.0", "give one of call, expr or http"),
    ({"examples": [{"call": "f", "expr": "f()", "expect": 1}]}, "examples.0", "not call and expr"),
    ({"examples": [{"call": "os.system('x')", "expect": 1}]}, "examples.0.call", "should match pattern"),
    ({"examples": [{"call": "f", "args": [0] * 51, "expect": 1}]}, "examples.0.args", "at most 50 items"),
    ({"examples": [{"call": "f", "expect": nested(21)}]}, "examples.0", "nest deeper than 20 levels"),
    ({"examples": [{"call": "f", "expect": 1, "status": 201}]}, "examples.0", "go with http examples"),
    ({"examples": [{"http": {"path": "/"}, "expect": 1}]}, "examples.0", "not expect or raises"),
    ({"examples": [{"http": {"path": "healthz"}}]}, "examples.0.http.path", "should match pattern"),
    ({"examples": [{"http": {"method": "TRACE", "path": "/"}}]}, "examples.0.http.method", "'GET', 'POST'"),
    ({"examples": [{"http": {"path": "/"}, "status": 999}]}, "examples.0.status", "less than or equal to 599"),
    ({"examples": [{**CALL, "unknown": 1}]}, "examples.0.unknown", "Extra inputs are not permitted"),
    ({"examples": [{"call": "f", "expect": "x" * 3000}] * 90}, "", "bytes as JSON, over the 262144 byte limit"),
    ({}, "", "give examples, tests or both"),
]


@pytest.mark.parametrize("model", BOTH_MODELS, ids=["events", "agents"])
@pytest.mark.parametrize(("acceptance", "where", "message"), BAD, ids=[f"{w or 'acceptance'}:{m}" for _, w, m in BAD])
def test_every_bound_is_enforced_and_named(model: type[BaseModel], acceptance: Any, where: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(acceptance, extra="forbid")  # as the edges validate it
    lines = describe_validation_error(info.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].strip().startswith(f"{where or '(request)'}: "), lines
    assert message in lines[0], lines


def test_a_request_file_names_the_example_that_is_wrong(tmp_path: Path) -> None:
    request = {
        "project": "blog",
        "prompt": SLUGIFY,
        "requested_by": "dana",
        "acceptance": {"examples": [CALL, CALL, CALL, {**CALL, "raises": "ValueError"}]},
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    with pytest.raises(RequestError) as info:
        load_model(path, PipelineRequest)
    assert "  acceptance.examples.3: give expect or raises, not both" in str(info.value).splitlines()
    result = CliRunner().invoke(app, ["pipeline", "request", str(path)])
    assert result.exit_code == 1
    assert "acceptance.examples.3: give expect or raises, not both" in result.output


def test_request_files_carry_acceptance(tmp_path: Path) -> None:
    shipped = load_model(EXAMPLES / "acceptance.json", PipelineRequest)
    assert shipped.acceptance is not None and len(shipped.acceptance.examples) == 5
    path = tmp_path / "request.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            project: blog
            prompt: slugify article titles into URL slugs
            requested_by: dana
            acceptance:
              examples:
                - {call: slugify, args: [Hello World], expect: hello-world}
                - {expr: "slugify('')", expect: ""}
              tests: |
                def test_short(module):
                    assert module.slugify("a b", max_length=1) == "a"
            """
        )
    )
    request = load_model(path, PipelineRequest)
    assert request.acceptance is not None and request.acceptance.tests is not None
    assert request.acceptance.tests.startswith("def test_short(module):\n")


def test_events_and_agents_hold_one_shape() -> None:
    for name in ("Acceptance", "AcceptanceExample", "HttpCall"):
        assert getattr(event_models, name).model_json_schema() == getattr(agent_models, name).model_json_schema()


def test_what_was_written_survives_every_round_trip() -> None:
    """``expect: null`` is a value, no ``expect`` is none: through the event, the workflow and the activity."""
    written = {
        "examples": [
            {"call": "f", "expect": None},
            {"expr": "f()", "raises": "ValueError"},
            {"http": {"method": "PUT", "path": "/x", "json": None}, "status": 201},
            {"http": {"path": "/x"}, "expect_json": None},
        ],
        "tests": "def test_x():\n    pass\n",
    }
    request = PipelineRequest(project="blog", prompt=SLUGIFY, requested_by="dana", acceptance=written)
    event_data = request.model_dump(mode="json")
    assert event_data["acceptance"] == written
    payload = pydantic_data_converter.payload_converter.to_payloads([request])[0]
    decoded = pydantic_data_converter.payload_converter.from_payloads([payload], [PipelineRequest])[0]
    assert decoded == request
    assert request.acceptance is not None
    inp = ExecuteTestsInput(
        run_id="r", module="m", acceptance=agent_models.Acceptance.model_validate(request.acceptance.model_dump())
    )
    payload = pydantic_data_converter.payload_converter.to_payloads([inp])[0]
    assert json.loads(payload.data)["acceptance"] == written
    assert pydantic_data_converter.payload_converter.from_payloads([payload], [ExecuteTestsInput])[0] == inp


def test_without_acceptance_nothing_new_is_sent() -> None:
    """Bridges, workers and workflows from before acceptance decode what today's send when it is not used."""
    request = PipelineRequest(project="blog", prompt=SLUGIFY, requested_by="dana")
    assert "acceptance" not in request.model_dump(mode="json")
    assert "acceptance" not in ExecuteTestsInput(run_id="r", module="m").model_dump(mode="json")
    report = TestReport(passed=1, failed=0, errors=0, coverage=90, duration_seconds=1, junit_report="", isolation="x")
    assert "acceptance" not in json.loads(report.model_dump_json())
    assert TestReport.model_validate(report.model_dump()).acceptance is None
