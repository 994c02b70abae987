"""The task suite of `quantum eval` (quantum/evaluation/tasks.yaml) holds together.

Every task is well formed; its hidden tests pass against its reference solution; each of its acceptance examples
holds for that reference; a task marked ``offline_pattern`` is solved by that pattern's module as the library would
render it, and a task marked ``trap_for`` is not. Deliberately self-contained: nothing is imported from agents/ or
quantum/ (the pattern templates are read as text), and each task's code runs in a subprocess in its own directory.
"""

from __future__ import annotations

import ast
import json
import keyword
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TASKS_FILE = ROOT / "quantum" / "evaluation" / "tasks.yaml"
PATTERNS_DIR = ROOT / "agents" / "patterns_lib"
TASKS: list[dict[str, Any]] = yaml.safe_load(TASKS_FILE.read_text(encoding="utf-8"))["tasks"]
OFFLINE = [task for task in TASKS if "offline_pattern" in task]
TRAPS = [task for task in TASKS if "trap_for" in task]
REQUIRED = {"id", "project", "prompt", "hidden_tests", "reference"}
OPTIONAL = {"acceptance", "offline_pattern", "trap_for"}
TASK_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
PROJECT = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")  # a request's project name
DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
HTTP_PATH = re.compile(r"^/[!-~]*$")
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
TIMEOUT_SECONDS = 60
MAX_TEST_SECONDS = 5.0
"""How long one hidden test file may take, as pytest reports it (interpreter start-up aside)."""

RUNNER = r'''
"""Checks acceptance examples against a module: python run_examples.py MODULE EXAMPLES_JSON."""
import importlib
import json
import sys
import threading
import urllib.error
import urllib.request

module = importlib.import_module(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as handle:
    examples = json.load(handle)
namespace = {name: getattr(module, name) for name in dir(module) if not name.startswith("_")}
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def resolve(dotted):
    value = module
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def is_a(error, name):
    wanted = name.rsplit(".", 1)[-1]
    return any(cls.__name__ == wanted for cls in type(error).__mro__)


def check_value(example):
    try:
        if "call" in example:
            value = resolve(example["call"])(*example.get("args", []), **example.get("kwargs", {}))
        else:
            value = eval(example["expr"], dict(namespace))
    except Exception as error:
        if "raises" in example and is_a(error, example["raises"]):
            return None
        return f"raised {error!r}"
    if "raises" in example:
        return f"returned {value!r} instead of raising {example['raises']}"
    if value != example["expect"]:
        return f"returned {value!r}, expected {example['expect']!r}"
    return None


def start():
    server = module.make_server(0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()


def check_http(example, server):
    http = example["http"]
    data = json.dumps(http["json"]).encode() if "json" in http else None
    url = f"http://127.0.0.1:{server.server_address[1]}{http['path']}"
    request = urllib.request.Request(url, data=data, method=http.get("method", "GET"))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with opener.open(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            status, body = error.code, error.read()
    problems = []
    if status != example.get("status", 200):
        problems.append(f"status {status}, expected {example.get('status', 200)}")
    if "expect_json" in example:
        try:
            got = json.loads(body)
        except ValueError:
            problems.append(f"the body {body[:200]!r} is not JSON")
        else:
            if got != example["expect_json"]:
                problems.append(f"body {got!r}, expected {example['expect_json']!r}")
    return "; ".join(problems) or None


def guarded(check, *args):
    try:
        return check(*args)
    except Exception as error:
        return f"could not be checked: {error!r}"


def on_fresh_server(example):
    server = start()
    try:
        return check_http(example, server)
    finally:
        stop(server)


fresh = [guarded(on_fresh_server if "http" in e else check_value, e) for e in examples]
# HTTP examples once more, in order on one server: they must hold whether each has its own server or all share one.
shared = {}
if any("http" in e for e in examples):
    server = start()
    try:
        shared = {i: guarded(check_http, e, server) for i, e in enumerate(examples) if "http" in e}
    finally:
        stop(server)
print(json.dumps({"fresh": fresh, "shared": shared}))
'''


def module_name(task: dict[str, Any]) -> str:
    return str(task["project"]).replace("-", "_")


def by_id(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"argvalues": tasks, "ids": [str(task.get("id")) for task in tasks]}


def examples_of(task: dict[str, Any]) -> list[dict[str, Any]]:
    return list((task.get("acceptance") or {}).get("examples") or [])


def imported_names(tests: str, module: str) -> set[str]:
    """The names the hidden tests import from the module under test."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(tests)):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            names.update(alias.name for alias in node.names)
    return names


def subprocess_env(folder: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "PYTHON"))}
    env.update(PYTHONPATH=str(folder), PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    return env


def write_module(folder: Path, task: dict[str, Any], source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module_name(task)}.py").write_text(source, encoding="utf-8")


def run_hidden_tests(folder: Path, task: dict[str, Any], source: str) -> subprocess.CompletedProcess[str]:
    write_module(folder, task, source)
    (folder / "test_hidden.py").write_text(task["hidden_tests"], encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=folder,
        env=subprocess_env(folder),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )


def check_examples(folder: Path, task: dict[str, Any], source: str) -> list[str]:
    """Problems with the task's acceptance examples against ``source`` as the module (none when all hold)."""
    examples = examples_of(task)
    write_module(folder, task, source)
    (folder / "examples.json").write_text(json.dumps(examples), encoding="utf-8")
    (folder / "run_examples.py").write_text(RUNNER, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "run_examples.py", module_name(task), "examples.json"],
        cwd=folder,
        env=subprocess_env(folder),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, f"the example runner failed:\n{done.stdout}\n{done.stderr}"
    results = json.loads(done.stdout.strip().splitlines()[-1])
    problems = [f"example {i} {examples[i]}: {problem}" for i, problem in enumerate(results["fresh"]) if problem]
    problems += [
        f"example {i} {examples[int(i)]} on a shared server: {problem}"
        for i, problem in results["shared"].items()
        if problem
    ]
    return problems


def render_pattern(task: dict[str, Any], pattern: str) -> str:
    """The pattern's module as the library renders it for this task's request."""
    template = (PATTERNS_DIR / pattern / "module.py").read_text(encoding="utf-8")
    project = str(task["project"])
    title = project.replace("-", " ").replace("_", " ").title()
    prompt = " ".join(task["prompt"].split()).replace("\\", "/").replace('"""', "'''")
    rendered = template.replace("{{module}}", module_name(task)).replace("{{project}}", project)
    return rendered.replace("{{title}}", title).replace("{{prompt}}", prompt)


def session_seconds(output: str) -> float:
    found = re.findall(r" in (\d+(?:\.\d+)?)s", output)
    return float(found[-1]) if found else 0.0


# --- the suite as a whole ----------------------------------------------------------------------------------------


def test_the_suite_is_large_and_varied_enough() -> None:
    assert len(TASKS) >= 28
    http = [task for task in TASKS if "def make_server" in task["reference"] and "urllib" in task["hidden_tests"]]
    assert len(http) >= 2
    assert 5 <= len(OFFLINE) <= 8
    assert len(TRAPS) >= 3
    assert not [task["id"] for task in OFFLINE if "trap_for" in task]


def test_ids_projects_and_modules_are_unique() -> None:
    ids = [task.get("id") for task in TASKS]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    modules = [module_name(task) for task in TASKS]
    assert len(modules) == len(set(modules)), sorted(m for m in modules if modules.count(m) > 1)


def test_named_patterns_exist() -> None:
    named = {task.get("offline_pattern") for task in OFFLINE} | {task.get("trap_for") for task in TRAPS}
    missing = sorted(str(name) for name in named if not (PATTERNS_DIR / str(name) / "module.py").is_file())
    assert not missing


# --- each task -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", **by_id(TASKS))
def test_task_is_well_formed(task: dict[str, Any]) -> None:
    assert REQUIRED <= set(task), f"missing {sorted(REQUIRED - set(task))}"
    assert set(task) <= REQUIRED | OPTIONAL, f"unknown keys {sorted(set(task) - REQUIRED - OPTIONAL)}"
    assert all(isinstance(task[key], str) and task[key].strip() for key in REQUIRED)
    assert TASK_ID.match(task["id"])
    assert PROJECT.match(task["project"])
    module = module_name(task)
    assert module.isidentifier() and not keyword.iskeyword(module)
    assert module not in sys.stdlib_module_names and not module.startswith(("test", "conftest"))
    ast.parse(task["reference"], filename=f"{module}.py")
    ast.parse(task["hidden_tests"], filename="test_hidden.py")
    names = imported_names(task["hidden_tests"], module)
    assert names, f"the hidden tests import nothing from {module}"
    unstated = sorted(name for name in names if not re.search(rf"\b{re.escape(name)}\b", task["prompt"]))
    assert not unstated, f"the hidden tests import {unstated}, which the prompt does not name"
    for key in ("offline_pattern", "trap_for"):
        if key in task:
            assert isinstance(task[key], str) and re.match(r"^[a-z_]+$", task[key])


@pytest.mark.parametrize("task", **by_id(TASKS))
def test_acceptance_is_well_formed(task: dict[str, Any]) -> None:
    acceptance = task.get("acceptance")
    if acceptance is None:
        return
    assert isinstance(acceptance, dict) and set(acceptance) <= {"examples", "tests"}
    examples = examples_of(task)
    assert examples or acceptance.get("tests")
    for number, example in enumerate(examples):
        where = f"example {number} {example}"
        assert isinstance(example, dict), where
        json.dumps(example, allow_nan=False)  # JSON values only
        kinds = [kind for kind in ("call", "expr", "http") if kind in example]
        assert len(kinds) == 1, f"{where}: give one of call, expr or http"
        if "http" in example:
            http = example["http"]
            assert set(example) <= {"http", "status", "expect_json"}, where
            assert isinstance(http, dict) and set(http) <= {"method", "path", "json"} and "path" in http, where
            assert http.get("method", "GET") in HTTP_METHODS and HTTP_PATH.match(http["path"]), where
            assert isinstance(example.get("status", 200), int) and 100 <= example.get("status", 200) <= 599, where
            continue
        assert ("expect" in example) != ("raises" in example), f"{where}: give expect or raises"
        assert set(example) <= {"call", "args", "kwargs", "expr", "expect", "raises"}, where
        if "raises" in example:
            assert isinstance(example["raises"], str) and DOTTED.match(example["raises"]), where
        if "call" in example:
            assert isinstance(example["call"], str) and DOTTED.match(example["call"]), where
            assert isinstance(example.get("args", []), list), where
            kwargs = example.get("kwargs", {})
            assert isinstance(kwargs, dict) and all(str(key).isidentifier() for key in kwargs), where
        else:
            assert "args" not in example and "kwargs" not in example, where
            assert isinstance(example["expr"], str), where
            ast.parse(example["expr"], mode="eval")


@pytest.mark.parametrize("task", **by_id(TASKS))
def test_hidden_tests_pass_against_the_reference(task: dict[str, Any], tmp_path: Path) -> None:
    done = run_hidden_tests(tmp_path, task, task["reference"])
    assert done.returncode == 0, f"{task['id']}: the hidden tests fail on the reference\n{done.stdout}\n{done.stderr}"
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout
    seconds = session_seconds(done.stdout)
    assert seconds < MAX_TEST_SECONDS, f"{task['id']}: the hidden tests took {seconds:.2f} s"


@pytest.mark.parametrize("task", **by_id([task for task in TASKS if examples_of(task)]))
def test_acceptance_examples_hold_for_the_reference(task: dict[str, Any], tmp_path: Path) -> None:
    problems = check_examples(tmp_path, task, task["reference"])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("task", **by_id(OFFLINE))
def test_offline_pattern_solves_its_task(task: dict[str, Any], tmp_path: Path) -> None:
    source = render_pattern(task, task["offline_pattern"])
    done = run_hidden_tests(tmp_path / "tests", task, source)
    assert done.returncode == 0, f"{task['offline_pattern']} fails the hidden tests\n{done.stdout}\n{done.stderr}"
    problems = check_examples(tmp_path / "examples", task, source)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("task", **by_id(TRAPS))
def test_trap_is_not_solved_by_its_pattern(task: dict[str, Any], tmp_path: Path) -> None:
    done = run_hidden_tests(tmp_path, task, render_pattern(task, task["trap_for"]))
    assert done.returncode != 0, f"{task['trap_for']} passes the hidden tests of {task['id']}: not a trap"
