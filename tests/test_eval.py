"""``quantum eval``: tasks built through the real path (CodeGenerationWorkflow with tests, on the real dev server and
sandbox), judged by hidden tests the agents never see."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

from quantum.evaluation.runner import TASKS_FILE, EvalError, Task, evaluate, load_tasks, settings_for
from quantum.settings import Settings
from tests.agents.openai_server import OpenAIServer, Reply
from tests.cli.support import quantum, quantum_env
from tests.conftest import free_port

ADDER_HIDDEN = "from adder import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n    assert add(-4, 4) == 0\n"
RIGHT = "def add(a: int, b: int) -> int:\n    return a + b\n"
WRONG = "def add(a: int, b: int) -> int:\n    return a - b\n"


def suite_claiming(*cases: tuple[int, int, int]) -> str:
    checks = "".join(f"    assert add({a}, {b}) == {total}\n" for a, b, total in cases)
    return f"from adder import add\n\n\ndef test_add():\n{checks}"


def files(**named: str) -> Reply:
    return Reply(content=json.dumps({"files": [{"path": p, "content": c} for p, c in named.items()]}))


def test_the_shipped_suite_has_twenty_five_tasks_or_more() -> None:
    tasks = load_tasks()
    assert len(tasks) >= 25 and len({t.id for t in tasks}) == len(tasks)
    assert sum(1 for t in tasks if t.offline_pattern) >= 5 and sum(1 for t in tasks if t.trap_for) >= 3


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tasks: []\n", "has no list of tasks"),
        ("tasks: [\n", "is not YAML"),
        (
            "tasks:\n  - {id: a, project: a, prompt: abc, hidden_tests: x}\n  - {id: a, project: b, prompt: abc, "
            "hidden_tests: y}\n",
            "repeats a task id: ['a']",
        ),
        ("tasks:\n  - {id: a, project: a, prompt: abc}\n", "task a in"),
        ("tasks:\n  - {id: a, project: Not A Name, prompt: abc, hidden_tests: x}\n", "task a in"),
        (
            "tasks:\n  - {id: a, project: a, prompt: abc, hidden_tests: x, acceptance: {examples: [{call: f}]}}\n",
            "task a in",
        ),
    ],
)
def test_a_tasks_file_that_cannot_be_used_is_refused_naming_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text(text)
    with pytest.raises(EvalError) as info:
        load_tasks(path)
    assert problem in str(info.value)


def test_the_model_provider_needs_an_endpoint(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="QUANTUM_LLM_BASE_URL"):
        settings_for(Settings(data_dir=tmp_path, _env_file=None), "model")  # type: ignore[call-arg]


async def test_offline_the_library_solves_what_it_knows_and_refuses_the_rest(
    temporal_address: str, nats_url: str, tmp_path: Path
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data", temporal_address=temporal_address, nats_url=nats_url, _env_file=None
    )
    chosen = {t.id: t for t in load_tasks(TASKS_FILE) if t.id in {"blog-slugs", "iban-check", "snake-slugs"}}
    report = await evaluate(settings_for(settings, "offline"), list(chosen.values()))
    outcomes = {r.id: r.outcome for r in report.results}
    assert outcomes == {"blog-slugs": "solved", "iban-check": "refused", "snake-slugs": "refused"}, report.results
    assert report.totals["wrong_but_green"] == 0 and report.provider == "offline-patterns"
    refused = next(r for r in report.results if r.id == "iban-check")
    assert "names no job" in refused.detail
    assert not list((tmp_path / "data" / "workspaces").glob("*/src"))  # nothing left behind


def test_a_model_whose_tests_mirror_its_bug_is_caught_as_wrong_but_green(
    temporal_address: str, nats_url: str, tmp_path: Path
) -> None:
    """Through the CLI as a user runs it: the build goes green on the model's own tests, the hidden tests fail,
    the report says so and the command exits 1; a model that gets it right solves the same task."""
    tasks = tmp_path / "tasks.yaml"
    task = {
        "id": "adder",
        "project": "adder",
        "prompt": "Write `add(a: int, b: int) -> int`.",
        "hidden_tests": ADDER_HIDDEN,
    }
    tasks.write_text(json.dumps({"tasks": [task, {**task, "id": "adder-again"}]}))
    Task.model_validate(task)
    with OpenAIServer() as server:
        server.script(
            files(**{"adder.py": WRONG}),
            files(**{"test_adder.py": suite_claiming((2, 3, -1), (4, 4, 0))}),  # the bug, mirrored
            files(**{"adder.py": RIGHT}),
            files(**{"test_adder.py": suite_claiming((2, 3, 5), (4, 4, 8))}),
        )
        env = quantum_env(
            tmp_path / "data",
            int(temporal_address.rsplit(":", 1)[1]),
            int(urlparse(nats_url).port or 0),
            free_port(),
        )
        env.update(QUANTUM_LLM_BASE_URL=server.url, QUANTUM_LLM_MODEL="coder-1", QUANTUM_LLM_API_KEY="sk-eval")
        result = quantum(env, "eval", "--provider", "model", "--tasks", str(tasks), "--json", str(tmp_path / "r.json"))
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(t["id"], t["outcome"]) for t in report["tasks"]] == [
        ("adder", "wrong_but_green"),
        ("adder-again", "solved"),
    ]
    assert report["totals"]["wrong_but_green"] == 1 and report["totals"]["tokens"] == 4 * 59
    assert "wrong_but_green" in result.stdout and "1 wrong but green" in result.stdout
