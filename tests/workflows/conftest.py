"""Workflow tests: the real workflows and the real agents on a fresh task queue of the real dev server.

A failure is injected by registering an activity under a real activity's name in its place.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from agents.infra import project_dir, stream_name
from events.models import PipelineRequest, ReviewDecision
from quantum.settings import Settings
from quantum.worker import Agents, activity_name, build_agents, new_worker
from tests.agents.openai_server import OpenAIServer, Reply
from workflows.models import PipelineResult, RunStatusView

HTTP_PROMPT = "an HTTP JSON service with a health endpoint"
MODEL_KEY = "sk-pipeline-secret-key"


def failing(name: str, message: str = "injected failure") -> Callable[..., Any]:
    """An activity registered as ``name`` that always fails, non-retryably."""

    @activity.defn(name=name)
    async def fail(_: Any) -> Any:
        raise ApplicationError(f"{message} in {name}", type="Injected", non_retryable=True)

    return fail


class Harness:
    def __init__(self, client: Client, settings: Settings, agents: Agents) -> None:
        self.client = client
        self.settings = settings
        self.agents = agents
        self.task_queue = f"test-{uuid.uuid4()}"
        self.project = f"app-{uuid.uuid4().hex[:8]}"  # streams live on the session's NATS: one name per test

    def stream(self, name: str, environment: str = "dev") -> str:
        return stream_name(self.project, name, environment)

    def infra_dir(self, name: str, environment: str = "dev") -> Path:
        return project_dir(self.settings.data_path / "infra", self.project, environment) / name

    @asynccontextmanager
    async def worker(self, *replacements: Callable[..., Any]) -> AsyncIterator[None]:
        """Run a worker with the real agents' activities, each replacement standing in for its namesake."""
        replaced = {activity_name(fn) for fn in replacements}
        activities = [fn for fn in self.agents.activities() if activity_name(fn) not in replaced]
        async with new_worker(self.client, [*activities, *replacements], task_queue=self.task_queue):
            yield

    async def start(
        self, workflow: str, request: Any, *, prefix: str = "pipeline", workflow_id: str | None = None
    ) -> WorkflowHandle[Any, Any]:
        return await self.client.start_workflow(
            workflow,
            request,
            id=workflow_id or f"{prefix}-{uuid.uuid4()}",
            task_queue=self.task_queue,
            result_type=PipelineResult,
        )

    async def start_pipeline(self, **fields: Any) -> WorkflowHandle[Any, Any]:
        fields.setdefault("project", self.project)
        fields.setdefault("prompt", HTTP_PROMPT)
        fields.setdefault("requested_by", "alice")
        return await self.start("DevSecOpsPipelineWorkflow", PipelineRequest(**fields))


async def status(handle: WorkflowHandle[Any, Any]) -> RunStatusView:
    return await handle.query("status", result_type=RunStatusView)


async def wait_for(
    handle: WorkflowHandle[Any, Any], predicate: Callable[[RunStatusView], bool], *, timeout: float = 90
) -> RunStatusView:
    """Poll the ``status`` query until ``predicate`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    view = None
    while True:
        try:
            view = await status(handle)
        except RPCError as err:  # not started yet (a start through the bus is asynchronous)
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        if view is not None and predicate(view):
            return view
        if asyncio.get_running_loop().time() > deadline:
            last = view.model_dump_json() if view else "no run"
            raise AssertionError(f"condition not met within {timeout} s; last status: {last}")
        await asyncio.sleep(0.2)


async def wait_for_gate(handle: WorkflowHandle[Any, Any], gate: str) -> RunStatusView:
    return await wait_for(handle, lambda v: v.pending_gate == gate)


def gate_review(view: RunStatusView, reviewer: str, *, gate: str = "deploy", **fields: Any) -> ReviewDecision:
    """An approval of ``gate`` bound to what it asks about now: its digest and its opening's challenge (unsigned)."""
    bound = {"digest": view.gate_digests[gate], "challenge": view.gate_challenges[gate]}
    return ReviewDecision.model_validate({"gate": gate, "reviewer": reviewer, "approved": True, **bound, **fields})


@asynccontextmanager
async def harness_with(client: Client, nats_url: str, tmp_path: Path, **settings: Any) -> AsyncIterator[Harness]:
    """A harness whose worker's agents are built from settings with ``settings`` changed."""
    config = Settings(data_dir=tmp_path / "data", nats_url=nats_url, _env_file=None, **settings)  # type: ignore[call-arg]
    agents = build_agents(config)
    try:
        yield Harness(client, config, agents)
    finally:
        await agents.close()


@pytest.fixture
async def harness(client: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness_with(client, nats_url, tmp_path) as made:
        yield made


def files(**named: str) -> Reply:
    """A model's reply naming files (path -> content)."""
    return Reply(content=json.dumps({"files": [{"path": p, "content": c} for p, c in named.items()]}))


@pytest.fixture
async def model(client: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[Harness, OpenAIServer]]:
    """A harness whose agents talk to a scripted local server speaking the OpenAI protocol."""
    with OpenAIServer() as server:
        settings = Settings(  # type: ignore[call-arg]
            data_dir=tmp_path / "data",
            nats_url=nats_url,
            llm_base_url=server.url,
            llm_model="coder-1",
            llm_api_key=MODEL_KEY,
            _env_file=None,
        )
        agents = build_agents(settings)
        try:
            yield Harness(client, settings, agents), server
        finally:
            await agents.close()
