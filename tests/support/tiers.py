"""The suite's two tiers: ``server`` (the test needs a real server) and ``fast`` (everything else).

tests/conftest.py gives every collected test one of the two markers, from what the test uses; nothing is marked by
hand. A test is ``server`` when

1. it uses one of ``SERVER_FIXTURES``, directly or through other fixtures (``item.fixturenames`` is the closure);
2. its own code, or the code of one of its fixtures, starts a server. The function is read (not run) with what it
   names of its module (helpers, classes, constants such as a ``python -c`` script), followed into the ``tests.*``
   modules it imports from. Starting a server means: naming one of ``SERVER_STARTERS``; running one of
   ``SERVER_BINARIES`` (``Popen([str(BIN / "nats-server"), ...])``); running a ``quantum`` command that brings up a
   stack of its own (``STACK_COMMANDS``: ``quantum(env, "up")``, ``Popen([str(QUANTUM), "demo"])``,
   ``CliRunner().invoke(app, ["bench", ...])``);
3. or it is listed in ``SERVER_TESTS``, for what rules 1 and 2 cannot see.

Every other test is ``fast``: ``pytest -m "not server"`` (``make test-fast``) needs no server. The rules are checked
while the fast tests run: a fast test that starts a Temporal or NATS server or Prometheus in the test process anyway
(a child process, or ``WorkflowEnvironment``) is stopped and fails, naming what it started. Fix the classification
then (a fixture in ``SERVER_FIXTURES``, a name in ``SERVER_STARTERS``, or the test in ``SERVER_TESTS``), not the test.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]

SERVER_FIXTURES = frozenset(
    {
        # tests/conftest.py: the session's Temporal dev server (and its client) and nats-server
        "temporal_env",
        "temporal_address",
        "client",
        "nats_url",
        # tests/events/conftest.py: a nats-server of each test's own and a connection to it; a Temporal dev server a
        # test stops and starts
        "nc",
        "stoppable_temporal",
        # tests/workflows/conftest.py: workers of the real agents on the dev server
        "harness",
        "model",
        # tests/cli/conftest.py: `quantum up`, for one test or a module
        "stack_up",
        "product",
        # tests/observability/conftest.py: a real Prometheus scraping the catalogue's metrics
        "prometheus",
    }
)
"""Fixtures that start a real server (or need one). Fixtures of test modules that start one in their own code are
found by rule 2 (``own_nats``, ``secured``, ``exposure`` ...) and need not be listed."""

SERVER_STARTERS = frozenset(
    {
        "EmbeddedStack",  # quantum.stack: Temporal, NATS (and Prometheus) as `quantum up` runs them
        "TemporalDevServer",
        "NatsServer",
        "WorkflowEnvironment",  # temporalio.testing: start_local / start_time_skipping
        "bench_events",  # quantum.bench: each suite runs on a stack of its own
        "bench_saga",
        "bench_footprint",
        "bench_pipeline",
        "bench_chaos",
    }
)
"""Names (of the product, of temporalio) whose use starts a server."""

SERVER_BINARIES = frozenset({"temporal", "nats-server", "prometheus"})
STACK_COMMANDS = frozenset({"up", "demo", "bench"})
"""``quantum`` commands that bring up a stack of their own."""
CLI_NAMES = frozenset({"QUANTUM", "quantum", "app"})
"""The console script's path, tests.cli.support's ``quantum()`` and the typer app."""
SUBPROCESS_CALLS = frozenset({"Popen", "run", "check_call", "check_output", "create_subprocess_exec"})

SERVER_TESTS: dict[str, str] = {
    "tests/test_bench.py::test_the_command_prints_the_table_and_writes_json": (
        "`quantum bench events` through CliRunner, its arguments in a variable"
    ),
}
"""Tests (node ids, parameters left out) that start a server in a way rules 1 and 2 do not see, and why."""


def is_server(item: pytest.Item) -> bool:
    """Whether ``item`` needs a real server (rules 1 to 3 of the module's docstring)."""
    if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    if item.nodeid.split("[", 1)[0] in SERVER_TESTS:
        return True
    functions = [getattr(item, "function", None)]
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    if fixtureinfo is not None:
        for name in item.fixturenames:  # type: ignore[attr-defined]
            defs = fixtureinfo.name2fixturedefs.get(name)
            if defs:
                functions.append(defs[-1].func)
    return any(_starts_a_server(fn) for fn in functions if fn is not None)


def _starts_a_server(fn: Any) -> bool:
    fn = getattr(fn, "__wrapped__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return False
    path = Path(code.co_filename).resolve()
    if not path.is_relative_to(TESTS):
        return False  # pytest's own fixtures, plugins'
    top = fn.__qualname__.split(".", 1)[0]  # a test method: its whole class
    return _module_starters(path).get(top, False)


_modules: dict[Path, dict[str, bool]] = {}


def _module_starters(path: Path) -> dict[str, bool]:
    """For each top-level name of a module (its functions, classes, constants and what it imports from tests.*),
    whether using it starts a server."""
    if path in _modules:
        return _modules[path]
    _modules[path] = {}  # an import cycle sees nothing more
    tree = ast.parse(path.read_text(), str(path))
    direct: dict[str, bool] = {}
    uses: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.module else []
            base = path.parents[node.level - 1].joinpath(*parts) if node.level else TESTS.parent.joinpath(*parts)
            source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
            if source.resolve().is_relative_to(TESTS) and source.is_file():
                imported = _module_starters(source.resolve())
                for alias in node.names:
                    direct[alias.asname or alias.name] = imported.get(alias.name, False)
            continue
        for name in _defines(node):
            direct[name] = direct.get(name, False) or _starts_directly(node)
            uses.setdefault(name, set()).update(_names_used(node))
    starters = {name for name, starts in direct.items() if starts}
    grown = True
    while grown:
        more = {name for name, used in uses.items() if name not in starters and used & starters}
        starters |= more
        grown = bool(more)
    _modules[path] = {name: name in starters for name in direct}
    return _modules[path]


def _defines(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _walk(node: ast.stmt) -> Iterator[ast.AST]:
    """The nodes of a definition's code: its decorators (``parametrize`` data) and docstrings left out."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        extra: list[ast.AST] = [node.args] if not isinstance(node, ast.ClassDef) else list(node.bases)
        for part in [*extra, *body]:
            if isinstance(part, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                yield from _walk(part)
            else:
                yield from ast.walk(part)
    else:
        yield from ast.walk(node)


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _names_used(node: ast.stmt) -> set[str]:
    return {name for sub in _walk(node) if (name := _name(sub)) is not None}


def _mentions(nodes: list[ast.expr], names: frozenset[str]) -> bool:
    return any(_name(sub) in names for node in nodes for sub in ast.walk(node))


def _first_string(nodes: list[ast.expr]) -> str | None:
    for node in nodes:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
    return None


def _starts_directly(node: ast.stmt) -> bool:
    for sub in _walk(node):
        if _name(sub) in SERVER_STARTERS:
            return True
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and len(sub.value) > 40:
            # a script run with `python -c`
            if any(f"{starter}(" in sub.value or f"{starter}." in sub.value for starter in SERVER_STARTERS):
                return True
        if isinstance(sub, ast.List | ast.Tuple):
            # [str(QUANTUM), "up", ...]
            if _mentions(sub.elts, CLI_NAMES) and _first_string(sub.elts) in STACK_COMMANDS:
                return True
        if isinstance(sub, ast.Call):
            # quantum(env, "demo"), create_subprocess_exec(str(QUANTUM), "up"), invoke(app, ["bench", ...])
            if _name(sub.func) in CLI_NAMES or _mentions(sub.args, CLI_NAMES):
                if _first_string(sub.args) in STACK_COMMANDS:
                    return True
                lists = [arg.elts for arg in sub.args if isinstance(arg, ast.List | ast.Tuple)]
                if any(_first_string(elts[:1]) in STACK_COMMANDS for elts in lists):
                    return True
            # Popen([str(BIN / "nats-server"), "-c", ...])
            if _name(sub.func) in SUBPROCESS_CALLS and sub.args:
                argv = sub.args[0]
                strings = [c.value for c in ast.walk(argv) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                if SERVER_BINARIES.intersection(strings):
                    return True
    return False


# --- tests that may not run side by side ---------------------------------------------------------------------------

ONE_WORKER: dict[str, str] = {
    # measures the growth of the whole host's shared memory (tmpfs pages) while a run fills its sandbox's /tmp or
    # /dev/shm: two of its cases side by side on two workers add up past the bound it allows
    "tests/agents/test_sandbox.py::test_filling_tmp_and_shared_memory_meets_their_bound": "host-shared-memory",
}
"""Tests that are not safe beside one another on parallel workers (pytest-xdist), by group: the tests of a group
run one at a time. Each gets the ``xdist_group`` mark, for ``--dist loadgroup`` to send a group to one worker; and
while one runs it holds the group's file lock, which the others wait for on any worker: with pytest 9.2,
``loadgroup`` no longer groups anything (pytest-dev/pytest-xdist#1386), and the lock holds with any ``--dist``."""


def xdist_group(item: pytest.Item) -> str | None:
    return ONE_WORKER.get(item.nodeid.split("[", 1)[0])


@contextlib.contextmanager
def _one_at_a_time(item: pytest.Item, group: str) -> Iterator[None]:
    """The group's lock, shared by the workers of one run (nothing to share without workers)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        yield
        return
    factory = getattr(item.config, "_tmp_path_factory", None)
    where = factory.getbasetemp().parent if factory is not None else Path(tempfile.gettempdir())
    with (where / f"group-{group}-{run}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- the check while the fast tests run ----------------------------------------------------------------------------

_FAST_TEST: list[pytest.Item] = []
"""The fast test running in this process, if one is."""
STARTED = pytest.StashKey[list[str]]()
_INSTALLED: list[bool] = []


def _server_in(args: Any) -> str | None:
    """The server a child process's argv starts, if it starts one."""
    try:
        argv = [os.fsdecode(a) for a in args] if isinstance(args, list | tuple) else os.fsdecode(args).split()
    except TypeError:
        return None
    if not argv:
        return None
    program = os.path.basename(argv[0])
    rest = argv[1:]
    if program == "temporal" and rest[:1] == ["server"]:
        return " ".join([program, *rest[:2]])
    if program in {"nats-server", "prometheus"} and not {"--version", "-v", "version"}.intersection(rest):
        return program
    return None


def _refuse(what: str) -> None:
    if _FAST_TEST:
        item = _FAST_TEST[-1]
        item.stash.setdefault(STARTED, []).append(what)
        raise RuntimeError(
            f"{item.nodeid} is a fast test but starts {what}: it needs the `server` marker; see tests/support/tiers.py"
        )


def install_guard() -> None:
    """Make a fast test that starts a server fail (while no fast test runs, nothing changes)."""
    if _INSTALLED:
        return
    _INSTALLED.append(True)
    popen_init = subprocess.Popen.__init__

    def guarded_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        if _FAST_TEST and (what := _server_in(args)):
            _refuse(what)
        popen_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = guarded_init  # type: ignore[method-assign]

    from temporalio.testing import WorkflowEnvironment

    for name in ("start_local", "start_time_skipping"):
        start = getattr(WorkflowEnvironment, name)

        async def guarded_start(cls: Any, *args: Any, _start: Any = start, _name: str = name, **kwargs: Any) -> Any:
            _refuse(f"WorkflowEnvironment.{_name}")
            return await _start(*args, **kwargs)

        setattr(WorkflowEnvironment, name, classmethod(guarded_start))


@contextlib.contextmanager
def running(item: pytest.Item) -> Iterator[None]:
    """One test's run: alone among its group, and checked when it is a fast test."""
    fast = item.get_closest_marker("server") is None
    group = xdist_group(item)
    with _one_at_a_time(item, group) if group else contextlib.nullcontext():
        if fast:
            _FAST_TEST.append(item)
        try:
            yield
        finally:
            if fast:
                _FAST_TEST.remove(item)


def failed_for_a_server(item: pytest.Item, report: pytest.TestReport) -> None:
    """A fast test that started a server fails, even when the error it got was caught on the way."""
    started = item.stash.get(STARTED, [])
    if not started:
        return
    message = (
        f"{item.nodeid} is a fast test but started {', '.join(started)}: it needs the `server` marker "
        "(see tests/support/tiers.py)"
    )
    if report.passed:
        report.outcome = "failed"
        report.longrepr = message
    else:
        report.sections.append(("a fast test started a server", message))
    started.clear()
