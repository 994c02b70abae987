"""The pattern store on qdrant-client local mode (on disk and in memory) with the offline embedder."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from agents.codegen import CodegenAgent
from agents.library import Pattern, PatternLibrary
from agents.models import GenerateCodeInput
from agents.patterns import HashingEmbedder, PatternStore, open_client
from agents.workspace import Workspaces

from .test_agents import PROMPTS

library = PatternLibrary()
embedder = HashingEmbedder()


def store_at(path: Path | None = None) -> PatternStore:
    client = AsyncQdrantClient(path=str(path)) if path else AsyncQdrantClient(location=":memory:")
    return PatternStore(client, embedder, dim=embedder.dim, library=library)


async def test_the_offline_embedder_is_deterministic_and_normalised() -> None:
    first, again, other = await embedder(["an lru cache", "an lru cache", "a semantic version parser"])
    assert first == again and first != other
    assert abs(sum(v * v for v in first) - 1.0) < 1e-9


async def test_each_request_finds_its_pattern_first() -> None:
    store = store_at()
    try:
        for name, prompt in PROMPTS.items():
            (best, *rest) = await store.search(prompt, k=3)
            assert best.name == name, (prompt, best, rest)
            assert best.score > rest[0].score
    finally:
        await store.close()


async def test_indexing_twice_changes_nothing_and_the_disk_keeps_it(tmp_path: Path) -> None:
    store = store_at(tmp_path / "qdrant")
    await store.ensure()
    await store.index(library)
    count = (await store.client.count(store.collection)).count
    assert count == len(library.patterns)
    await store.close()
    reopened = PatternStore(AsyncQdrantClient(path=str(tmp_path / "qdrant")), embedder, dim=embedder.dim)
    assert (await reopened.client.count(reopened.collection)).count == count
    assert (await reopened.search(PROMPTS["semver"]))[0].name == "semver"
    await reopened.close()


async def test_a_successful_generation_can_be_added_back_and_found() -> None:
    store = store_at()
    learned = Pattern(
        name="invoice_totals",
        description="Sum invoice lines with tax into totals per currency",
        keywords=("invoice", "totals", "tax", "currency", "lines"),
        module_template="def total():\n    return 0\n",
        tests_template="",
    )
    try:
        assert await store.add([learned], origin="generated") == 1
        (best, *_) = await store.search("totals of invoice lines with tax per currency")
        assert best.name == "invoice_totals" and best.pattern.module_template == learned.module_template
    finally:
        await store.close()


async def test_codegen_chooses_through_the_store_and_refuses_what_nothing_fits(tmp_path: Path) -> None:
    store = store_at()
    agent = CodegenAgent(Workspaces(tmp_path / "ws"), library, store)
    env = ActivityEnvironment()
    try:
        code = await env.run(
            agent.generate_code,
            GenerateCodeInput(run_id=f"r-{uuid.uuid4()}", project="sessions", prompt=PROMPTS["lru_cache"]),
        )
        assert code.pattern == "lru_cache"
        assert code.runner_up is not None and code.runner_up != "lru_cache"
        assert any(note.startswith("Chosen: pattern lru_cache (score 1.00") for note in code.notes), code.notes
        with pytest.raises(ApplicationError) as info:
            await env.run(
                agent.generate_code,
                GenerateCodeInput(run_id=f"r-{uuid.uuid4()}", project="qcd", prompt="quantum chromodynamics lattice"),
            )
        assert info.value.type == "NoPatternMatch" and "cannot build" in info.value.message
    finally:
        await store.close()


async def test_a_store_folder_in_use_falls_back_to_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = open_client(url="", api_key=None, path=str(tmp_path / "q"))
    second = open_client(url="", api_key=None, path=str(tmp_path / "q"))
    assert "is in use" in caplog.text and "keeping it in memory" in caplog.text
    try:
        store = PatternStore(second, embedder, dim=embedder.dim, library=library)
        assert (await store.search(PROMPTS["slugify"]))[0].name == "slugify"
    finally:
        await first.close()
        await second.close()
