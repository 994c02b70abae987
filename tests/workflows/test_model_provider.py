"""The pipeline with a model: QAgent and QTest talk to an OpenAI-compatible endpoint (a real local server speaking
the protocol, through the real ``openai`` client); everything else is as real as ever."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from agents.codegen import CodegenAgent, PatternLibrary
from agents.llm import LLMConfig, LLMGateway
from agents.models import GenerateCodeInput
from agents.workspace import Workspaces
from quantum.settings import Settings
from quantum.worker import build_agents
from tests.agents.openai_server import OpenAIServer, Reply

from .conftest import MODEL_KEY, Harness, files, status

KEY = MODEL_KEY

CODE = '''"""Arithmetic helpers."""


def add(a: int, b: int) -> int:
    return a + b


def is_even(n: int) -> bool:
    return n % 2 == 0
'''


def suite_for(module: str) -> str:
    return (
        f"from {module} import add, is_even\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n    assert add(-1, 1) == 0\n\n\n"
        "def test_is_even():\n    assert is_even(4) is True\n    assert is_even(3) is False\n"
    )


async def test_a_pipeline_with_a_model_endpoint(model: tuple[Harness, OpenAIServer]) -> None:
    harness, server = model
    module = harness.project.replace("-", "_")
    server.script(files(**{f"{module}.py": CODE}), files(**{f"test_{module}.py": suite_for(module)}))
    async with harness.worker():
        handle = await harness.start_pipeline(prompt="arithmetic helpers: add numbers and tell even ones")
        result = await handle.result()
        view = await status(handle)
        history = (await handle.fetch_history()).to_json()

    assert result.status == "succeeded"
    assert view.outputs["provider"] == "openai-compatible" and view.outputs["model"] == "coder-1"
    assert view.outputs["coverage"] == 100.0 and view.outputs["mutation_score"] >= 0.5
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions", "/v1/chat/completions"]
    assert [r["headers"].get("authorization") for r in server.requests] == [f"Bearer {KEY}"] * 2
    context = server.requests[0]["json"]["messages"][1]["content"]
    assert context.count("Pattern '") == 3 and context.count("```python") == 3  # the top-k patterns as context
    assert KEY not in history  # secrets never enter workflow histories
    statement = json.loads(
        (harness.agents.codegen.workspaces.for_run(handle.id) / "provenance.intoto.json").read_text()
    )
    assert statement["predicate"]["buildDefinition"]["internalParameters"]["model"] == "coder-1"


async def test_a_model_naming_a_file_outside_the_workspace_is_refused(tmp_path: Path) -> None:
    with OpenAIServer() as server:
        server.script(files(**{"../escape.py": "x = 1\n", "app.py": "y = 2\n"}))
        llm = LLMGateway(LLMConfig(base_url=server.url, model="coder-1", api_key=KEY))
        agent = CodegenAgent(Workspaces(tmp_path / "ws"), PatternLibrary(), None, llm)
        with pytest.raises(ApplicationError) as info:
            await ActivityEnvironment().run(
                agent.generate_code, GenerateCodeInput(run_id="r1", project="app", prompt="a slugify helper")
            )
        await llm.close()
    assert info.value.type == "UnsafeArtifact" and "../escape.py" in info.value.message
    assert not (tmp_path / "escape.py").exists() and not (tmp_path / "ws" / "escape.py").exists()


async def test_embeddings_come_from_the_endpoint_when_it_names_a_model(tmp_path: Path, nats_url: str) -> None:
    with OpenAIServer() as server:
        settings = Settings(  # type: ignore[call-arg]
            data_dir=tmp_path / "data",
            nats_url=nats_url,
            llm_base_url=server.url,
            llm_model="coder-1",
            llm_embedding_model="embed-small",
            llm_api_key=KEY,
            _env_file=None,
        )
        agents = build_agents(settings)
        store = agents.codegen.store
        assert store is not None
        try:
            server.script(*[Reply()] * 3)
            matches = await store.search("an lru cache")
        finally:
            await agents.close()
    assert store.collection == "quantum-patterns-embed-small" and store.dim == 3
    assert len(matches) == 3
    assert [r["json"]["model"] for r in server.requests] == ["embed-small"] * 3  # probe, library, query
    assert len(server.requests[1]["json"]["input"]) == len(PatternLibrary().patterns)


def test_embedding_models_whose_names_read_alike_get_distinct_collections(tmp_path: Path) -> None:
    from quantum.worker import build_pattern_store

    names = set()
    for model in ("embed_small", "embed-small", "Embed-Small", "embed small"):
        llm = LLMGateway(LLMConfig(base_url="http://127.0.0.1:9", model="m", embedding_model=model))
        settings = Settings(data_dir=tmp_path / model.replace(" ", "_"), _env_file=None)  # type: ignore[call-arg]
        names.add(build_pattern_store(settings, PatternLibrary(), llm).collection)
    assert len(names) == 4 and "quantum-patterns-embed-small" in names
