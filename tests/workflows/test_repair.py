"""The repair loop with a model that errs: a real local server speaking the OpenAI protocol, scripted per test,
through the real ``openai`` client; the real dev server, agents and sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError

from events.models import Acceptance, AcceptanceExample
from tests.agents.openai_server import OpenAIServer

from .conftest import Harness, files, status

TOKENS_PER_REPLY = 42 + 17  # what the scripted server reports for every reply
PROMPT = "arithmetic helpers: add two numbers and tell whether a number is even"

RIGHT = '''"""Arithmetic helpers."""


def add(a: int, b: int) -> int:
    return a + b


def is_even(n: int) -> bool:
    return n % 2 == 0
'''
WRONG = RIGHT.replace("return a + b", "return a - b")


def suite(module: str, total: int = 5) -> str:
    return (
        f"from {module} import add, is_even\n\n\n"
        f"def test_add():\n    assert add(2, 3) == {total}\n    assert add(-1, 1) == {0 if total == 5 else -2}\n\n\n"
        "def test_is_even():\n    assert is_even(4) is True\n    assert is_even(3) is False\n"
    )


def user_message(request: dict[str, Any]) -> str:
    return str(request["json"]["messages"][1]["content"])


def chats(server: OpenAIServer) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["path"].endswith("/chat/completions")]


async def test_a_bug_the_tests_catch_is_repaired_on_the_second_attempt(model: tuple[Harness, OpenAIServer]) -> None:
    harness, server = model
    module = harness.project.replace("-", "_")
    server.script(
        files(**{f"{module}.py": WRONG}),
        files(**{f"test_{module}.py": suite(module)}),
        files(**{f"{module}.py": RIGHT}),
        files(**{f"test_{module}.py": suite(module)}),
    )
    async with harness.worker():
        handle = await harness.start_pipeline(prompt=PROMPT)
        result = await handle.result()
        view = await status(handle)

    assert result.status == "succeeded"
    assert [(a.attempt, a.outcome) for a in view.attempts] == [(1, "failed"), (2, "passed")]
    assert "tests failed" in view.attempts[0].error and view.attempts[1].error == ""
    assert all(a.provider == "openai-compatible" and a.model == "coder-1" for a in view.attempts)
    assert [a.prompt_tokens + a.completion_tokens for a in view.attempts] == [2 * TOKENS_PER_REPLY] * 2
    assert view.outputs["attempts"] == 2 and view.outputs["tokens"] == 4 * TOKENS_PER_REPLY
    requests = chats(server)
    assert len(requests) == 4
    repair = user_message(requests[2])
    assert "attempt 2" in repair and "tests failed" in repair and "return a - b" in repair  # the failure and the code
    assert "assert" in repair  # the failing output went back too
    for tests_request in (requests[1], requests[3]):  # tests come from the interface, never the implementation
        text = user_message(tests_request)
        assert "def add(a: int, b: int) -> int:" in text and "return a" not in text
    assert view.compensations == []
    statement = json.loads(
        (harness.agents.codegen.workspaces.for_run(handle.id) / "provenance.intoto.json").read_text()
    )
    built = statement["predicate"]["buildDefinition"]["internalParameters"]
    assert (built["attempt"], built["promptTokens"], built["completionTokens"]) == (2, 42, 17)
    assert str(view.outputs["remembered_as"]).startswith("generated-")
    store = harness.agents.codegen.store
    assert store is not None
    assert view.outputs["remembered_as"] in [m.name for m in await store.search(PROMPT, k=30)]


async def test_a_model_that_never_gets_it_right_fails_after_max_attempts_and_compensates(
    model: tuple[Harness, OpenAIServer],
) -> None:
    harness, server = model
    module = harness.project.replace("-", "_")
    server.script(*[files(**{f"{module}.py": WRONG}), files(**{f"test_{module}.py": suite(module)})] * 2)
    async with harness.worker():
        handle = await harness.start_pipeline(prompt=PROMPT, max_attempts=2)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)

    assert view.status == "failed" and view.stages["execute_tests"] == "failed"
    assert view.error is not None and "tests failed" in view.error and "after 2 of 2 attempts" in view.error
    assert [a.outcome for a in view.attempts] == ["failed", "failed"]
    assert [c.step for c in view.compensations] == ["cleanup_tests", "cleanup_code"]  # once each, newest first
    assert len(chats(server)) == 4
    assert not harness.agents.codegen.workspaces.src(handle.id).exists()


async def test_tests_that_mirror_the_bug_never_make_it_green(model: tuple[Harness, OpenAIServer]) -> None:
    harness, server = model
    module = harness.project.replace("-", "_")
    mirrored = files(**{f"test_{module}.py": suite(module, total=-1)})  # asserts add(2, 3) == -1
    server.script(*[files(**{f"{module}.py": WRONG}), mirrored] * 2)
    acceptance = Acceptance(examples=[AcceptanceExample(call="add", args=[2, 3], expect=5)])
    async with harness.worker():
        handle = await harness.start_pipeline(prompt=PROMPT, max_attempts=2, acceptance=acceptance)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)

    assert view.status == "failed"
    assert view.error is not None and "acceptance" in view.error and "add(2, 3)" in view.error
    assert [a.outcome for a in view.attempts] == ["failed", "failed"]
    assert "expected 5" in user_message(chats(server)[2])  # the example that failed went back to the model


async def test_a_repair_that_writes_outside_the_workspace_is_refused(
    model: tuple[Harness, OpenAIServer], tmp_path: Path
) -> None:
    harness, server = model
    module = harness.project.replace("-", "_")
    server.script(
        files(**{f"{module}.py": WRONG}),
        files(**{f"test_{module}.py": suite(module)}),
        files(**{"../../../escape.py": "import os\n", f"{module}.py": RIGHT}),
    )
    async with harness.worker():
        handle = await harness.start_pipeline(prompt=PROMPT)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)

    assert view.status == "failed" and view.error is not None and "UnsafeArtifact" in view.error
    assert not list(tmp_path.rglob("escape.py"))


async def test_the_token_budget_stops_the_run_with_that_reason(model: tuple[Harness, OpenAIServer]) -> None:
    harness, server = model
    module = harness.project.replace("-", "_")
    server.script(files(**{f"{module}.py": RIGHT}), files(**{f"test_{module}.py": suite(module)}))
    async with harness.worker():
        handle = await harness.start_pipeline(prompt=PROMPT, max_tokens=100)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)

    assert view.stages["generate_tests"] == "failed"
    assert view.error is not None and "token budget of 100 is spent (118 used)" in view.error
    code_request, tests_request = chats(server)
    assert code_request["json"]["max_tokens"] == 100
    assert tests_request["json"]["max_tokens"] == 100 - TOKENS_PER_REPLY  # what was left of the budget
