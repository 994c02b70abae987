"""The request is the specification: its acceptance examples decide execute_tests, through the real saga."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from agents.workspace import Workspaces
from workflows.models import PIPELINE_STAGES

from .conftest import Harness, status

pytestmark = pytest.mark.workflow

SLUGIFY = "slugify article titles into URL slugs"


async def test_a_failing_acceptance_example_fails_execute_tests_and_compensates(harness: Harness) -> None:
    acceptance = {
        "examples": [
            {"call": "slugify", "args": ["Hello World"], "expect": "hello-world"},
            {"call": "slugify", "args": ["Hello World"], "expect": "hello_world"},
        ]
    }
    async with harness.worker():
        handle = await harness.start_pipeline(prompt=SLUGIFY, acceptance=acceptance)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        view = await status(handle)

    assert isinstance(info.value.cause, ApplicationError) and info.value.cause.type == "PipelineFailed"
    assert view.status == "failed"
    assert view.stages["execute_tests"] == "failed"
    assert view.error == (
        "execute_tests failed: 1 of 2 acceptance checks failed: "
        "example 1: slugify('Hello World') returned 'hello-world', expected 'hello_world'"
    )
    assert (view.outputs["acceptance_passed"], view.outputs["acceptance_total"]) == (1, 2)
    assert [(a.provider, a.outcome) for a in view.attempts] == [("offline-patterns", "failed")]  # no repair offline
    assert view.outputs["tests_passed"] > 0  # the generated tests ran too, and passed: acceptance decides
    assert "mutation_score" not in view.outputs
    assert [(c.step, c.outcome) for c in view.compensations] == [
        ("cleanup_tests", "completed"),
        ("cleanup_code", "completed"),
    ]
    later = PIPELINE_STAGES[PIPELINE_STAGES.index("execute_tests") + 1 :]
    assert all(view.stages[stage] == "pending" for stage in later)
    workspaces = Workspaces(harness.settings.data_path / "workspaces")
    assert not any(workspaces.src(handle.id).glob("*.py"))
    assert not any(workspaces.tests(handle.id).glob("*.py"))


async def test_a_run_that_meets_its_acceptance_succeeds(harness: Harness) -> None:
    acceptance = {
        "examples": [
            {"http": {"path": "/healthz"}, "expect_json": {"status": "ok", "service": harness.project}},
            {"http": {"method": "PUT", "path": "/items/a1", "json": {"total": 12}}, "status": 201},
            {"http": {"path": "/items/a1"}, "expect_json": {"total": 12}},
            {"expr": "sorted(Store().all())", "expect": []},
        ],
        "tests": "def test_the_store_keeps_items(module):\n"
        "    store = module.Store()\n"
        "    store.put('a', 1)\n"
        "    assert store.get('a') == 1\n",
    }
    async with harness.worker():
        handle = await harness.start_pipeline(acceptance=acceptance)
        result = await handle.result()
        view = await status(handle)

    assert result.status == "succeeded", view.error
    assert (result.outputs["acceptance_passed"], result.outputs["acceptance_total"]) == (5, 5)
    assert view.stages["execute_tests"] == "succeeded"
    assert result.outputs["mutation_score"] is not None
