"""Different requests through the offline provider end to end: the pattern store picks, QAgent writes, QTest runs
the tests in the sandbox with coverage and mutants, QSecure scans. Each must reach the product's targets."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient
from temporalio.testing import ActivityEnvironment

from agents.codegen import CodegenAgent, PatternLibrary
from agents.models import ExecuteTestsInput, GenerateCodeInput, GenerateTestsInput, ScanInput
from agents.patterns import HashingEmbedder, PatternStore
from agents.sandbox import Sandbox
from agents.security import SecurityAgent
from agents.testgen import TestgenAgent
from agents.workspace import Workspaces

REQUESTS = {
    "cli_tool": "a command line tool with argparse subcommands",
    "config_loader": "load configuration settings from environment variables with a prefix",
    "csv_json_parser": "parse CSV spreadsheet exports with a header into typed records",
    "event_bus": "an in-process event bus to publish and subscribe to topics with wildcards",
    "hmac_signer": "sign and verify tokens with an HMAC signature and an expiry",
    "http_service": "an HTTP JSON service with a health endpoint",
    "job_queue": "a priority job queue with retries and a dead letter list",
    "lru_cache": "an LRU cache with ttl for sessions",
    "markdown_table": "render rows as a markdown table with aligned columns",
    "password_policy": "check password strength against a policy and explain what is weak",
    "rate_limiter": "a token bucket rate limiter for API requests",
    "retry_helper": "retry flaky calls with exponential backoff and jitter",
    "semver": "parse and compare semantic version strings",
    "slugify": "slugify article titles into URL slugs",
    "url_shortener": "a URL shortener with base62 codes that can expand links again",
}
MIN_COVERAGE = 85.0

library = PatternLibrary()
env = ActivityEnvironment()


def test_the_library_has_at_least_fifteen_vetted_patterns() -> None:
    assert len(library.patterns) >= 15
    assert set(REQUESTS) <= set(library.patterns)


@pytest.fixture(scope="module")
async def store() -> PatternStore:
    embedder = HashingEmbedder()
    store = PatternStore(AsyncQdrantClient(location=":memory:"), embedder, dim=embedder.dim, library=library)
    yield store
    await store.close()


@pytest.mark.parametrize("expected", sorted(REQUESTS))
async def test_a_request_becomes_tested_scanned_code(expected: str, store: PatternStore, tmp_path: Path) -> None:
    workspaces = Workspaces(tmp_path / "ws")
    run_id = f"pipeline-{uuid.uuid4()}"
    prompt = REQUESTS[expected]
    code = await env.run(
        CodegenAgent(workspaces, library, store).generate_code,
        GenerateCodeInput(run_id=run_id, project="team-app", prompt=prompt),
    )
    assert code.pattern == expected, code.notes
    assert code.provider == "offline-patterns"
    tester = TestgenAgent(workspaces, library, Sandbox())
    await env.run(
        tester.generate_tests,
        GenerateTestsInput(run_id=run_id, module=code.module, prompt=prompt, pattern=code.pattern),
    )
    report = await env.run(tester.execute_tests, ExecuteTestsInput(run_id=run_id, module=code.module, mutants=4))
    assert report.failed == 0 and report.errors == 0 and report.passed >= 4, report.output_tail
    assert report.coverage >= MIN_COVERAGE
    assert report.mutation_score is not None and report.mutation_score >= 0.5, report.surviving_mutants
    scan = await env.run(SecurityAgent(workspaces).scan, ScanInput(run_id=run_id))
    assert scan.criticals == 0, scan.findings
