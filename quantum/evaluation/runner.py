"""``quantum eval``: does the build give what was asked? Small programming tasks, each with hidden acceptance tests
that the agents never see, built through the real generate, test and repair path.

Each task is a ``CodeGenerationWorkflow`` run with ``tested`` on, on a task queue of the evaluation's own worker
(so the workspace it leaves is on this machine), with whichever provider is configured. When the build ends green
(its generated tests and the request's acceptance checks passed), the hidden tests run in the sandbox against the
code it left. Outcomes: ``solved`` (green, and the hidden tests pass), ``wrong_but_green`` (green, and the hidden
tests fail: the number that must be zero), ``refused`` (the provider said it cannot build it) and ``failed``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.client import Client, WorkflowFailureError

from agents.codegen import module_name
from agents.errors import NO_PATTERN_MATCH
from agents.sandbox import Sandbox
from agents.workspace import Workspaces, copy_files, remove_tree
from events.models import MAX_ATTEMPTS, Acceptance, CodeRequest
from quantum.app import running
from quantum.settings import Settings
from quantum.worker import new_worker
from workflows.models import PipelineResult, RunStatusView

TASKS_FILE = Path(__file__).with_name("tasks.yaml")
Outcome = Literal["solved", "wrong_but_green", "refused", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("solved", "wrong_but_green", "refused", "failed")
HIDDEN_TIMEOUT_SECONDS = 120.0
MAX_DETAIL_CHARS = 400
REQUESTER = "quantum-eval"
QUIETED_LOGGERS = ("temporalio.activity", "temporalio.workflow")
_REFUSAL = re.compile(r"cannot build '.*?': (.*?)\. It knows", re.DOTALL)


class EvalError(Exception):
    """A task file or a choice of provider that cannot be used, with what is wrong."""


class Task(BaseModel):
    """One task: the request the agents see, and the hidden tests they never see."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    project: str
    prompt: str = Field(min_length=3, max_length=8000)
    acceptance: Acceptance | None = None
    hidden_tests: str = Field(min_length=1, max_length=256 * 1024)
    offline_pattern: str | None = None
    trap_for: str | None = None

    @property
    def module(self) -> str:
        return module_name(self.project)


def load_tasks(path: Path = TASKS_FILE) -> list[Task]:
    """The tasks of a YAML (or JSON) file: ``{tasks: [{id, project, prompt, acceptance?, hidden_tests}, ...]}``."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise EvalError(f"cannot read the tasks file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise EvalError(f"the tasks file {path} is not YAML: {err}") from None
    items = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise EvalError(f"the tasks file {path} has no list of tasks under `tasks`")
    tasks: list[Task] = []
    for index, item in enumerate(items):
        try:
            task = Task.model_validate(item)
            CodeRequest(project=task.project, prompt=task.prompt, requested_by=REQUESTER, acceptance=task.acceptance)
            tasks.append(task)
        except ValidationError as err:
            name = item.get("id", f"#{index}") if isinstance(item, dict) else f"#{index}"
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise EvalError(f"task {name} in {path}: {where}: {first['msg']}") from None
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise EvalError(f"the tasks file {path} repeats a task id: {sorted({i for i in ids if ids.count(i) > 1})}")
    return tasks


@dataclass
class TaskResult:
    id: str
    outcome: Outcome
    provider: str = ""
    attempts: int = 0
    tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    detail: str = ""


@dataclass
class EvalReport:
    provider: str
    results: list[TaskResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def totals(self) -> dict[str, Any]:
        return {
            "tasks": len(self.results),
            **{outcome: self.count(outcome) for outcome in OUTCOMES},
            "attempts": sum(r.attempts for r in self.results),
            "tokens": sum(r.tokens for r in self.results),
            "cost": round(sum(r.cost for r in self.results), 6),
            "seconds": round(self.seconds, 1),
        }

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "totals": self.totals, "tasks": [asdict(r) for r in self.results]}


def settings_for(settings: Settings, provider: str) -> Settings:
    """The settings for ``provider``: ``offline`` (no model, whatever is configured), ``model`` (the configured
    endpoint, which must exist) or ``configured`` (whichever the settings give)."""
    if provider == "offline":
        return settings.model_copy(update={"llm_base_url": "", "llm_model": "", "llm_api_key": None})
    if provider == "model" and settings.llm_config() is None:
        raise EvalError("--provider model needs a model endpoint: set QUANTUM_LLM_BASE_URL and QUANTUM_LLM_MODEL")
    return settings


async def evaluate(
    settings: Settings,
    tasks: list[Task],
    *,
    max_attempts: int | None = None,
    progress: Callable[[TaskResult], None] | None = None,
) -> EvalReport:
    """Build every task on the stack of ``settings`` (embedded servers where none answers) and judge it."""
    provider = "offline-patterns" if settings.llm_config() is None else "openai-compatible"
    report = EvalReport(provider=provider)
    started = time.monotonic()
    with _quiet(QUIETED_LOGGERS):
        await _evaluate(settings, tasks, report, max_attempts, progress)
    report.seconds = time.monotonic() - started
    return report


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Refusals and failing builds are outcomes here, not warnings: the SDK's loggers say only errors."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def _evaluate(
    settings: Settings,
    tasks: list[Task],
    report: EvalReport,
    max_attempts: int | None,
    progress: Callable[[TaskResult], None] | None,
) -> None:
    async with running(settings, with_bridge=False, with_metrics=False, with_worker=False) as up:
        queue = f"quantum-eval-{uuid.uuid4().hex}"
        async with new_worker(up.client, up.agents.activities(), task_queue=queue):
            sandbox = up.agents.testgen.sandbox
            workspaces = up.agents.codegen.workspaces
            for task in tasks:
                result = await _run_task(up.client, queue, task, workspaces, sandbox, max_attempts)
                report.results.append(result)
                if progress is not None:
                    progress(result)


async def _run_task(
    client: Client, queue: str, task: Task, workspaces: Workspaces, sandbox: Sandbox, max_attempts: int | None
) -> TaskResult:
    request = CodeRequest(
        project=task.project,
        prompt=task.prompt,
        requested_by=REQUESTER,
        acceptance=task.acceptance,
        tested=True,
        max_attempts=min(max_attempts, MAX_ATTEMPTS) if max_attempts else 3,
    )
    run_id = f"eval-{task.id}-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    handle = await client.start_workflow(
        "CodeGenerationWorkflow", request, id=run_id, task_queue=queue, result_type=PipelineResult
    )
    try:
        try:
            await handle.result()
            green = True
        except WorkflowFailureError:
            green = False
        view = await handle.query("status", result_type=RunStatusView)
        result = TaskResult(
            id=task.id,
            outcome="failed",
            provider=str(view.outputs.get("provider") or ""),
            attempts=len(view.attempts),
            tokens=sum(a.prompt_tokens + a.completion_tokens for a in view.attempts),
            cost=round(sum(a.cost for a in view.attempts), 6),
        )
        if not green:
            error = view.error or "the build failed"
            refusal = _REFUSAL.search(error)
            result.outcome = "refused" if NO_PATTERN_MATCH in error else "failed"
            result.detail = _short(refusal.group(1) if refusal else error)
        else:
            passed, output = await _hidden_tests(task, run_id, workspaces, sandbox)
            result.outcome = "solved" if passed else "wrong_but_green"
            result.detail = "" if passed else _short(output)
    finally:
        remove_tree(workspaces.for_run(run_id))
    result.seconds = round(time.monotonic() - started, 2)
    return result


async def _hidden_tests(task: Task, run_id: str, workspaces: Workspaces, sandbox: Sandbox) -> tuple[bool, str]:
    """Run the hidden tests against the code the build left, in a scratch copy inside the sandbox."""
    with workspaces.scratch(run_id) as scratch:
        copy_files(workspaces.src(run_id), scratch / "src")
        (scratch / "hidden").mkdir()
        (scratch / "hidden" / "test_hidden.py").write_text(task.hidden_tests)
        inside = sandbox.workdir(scratch)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", inside, f"{inside}/hidden"]
        result = await sandbox.run(
            argv, workspace=scratch, timeout=HIDDEN_TIMEOUT_SECONDS, env={"PYTHONPATH": f"{inside}/src"}
        )
    output = (result.stdout + result.stderr).strip()
    return result.returncode == 0 and not result.timed_out, output


def _short(text: str) -> str:
    """The last lines of ``text`` that say something, on one line, bounded."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith(("FAILED", "E ", "ERROR"))]
    shown = " | ".join((failed or lines)[-3:])
    return shown if len(shown) <= MAX_DETAIL_CHARS else shown[: MAX_DETAIL_CHARS - 1] + "…"
