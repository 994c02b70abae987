"""The runs' metrics on a real dev server: counted once, however often a worker replays the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from quantum.telemetry import TemporalTelemetry
from quantum.worker import new_replayer, new_worker

from .conftest import Harness, harness_with

pytestmark = pytest.mark.workflow

CODEGEN = {"workflow_type": "CodeGenerationWorkflow"}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    registry.collect()  # drains the buffer
    total = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def test_a_run_is_counted_once_however_often_it_is_replayed(
    client: Client, nats_url: str, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    telemetry = TemporalTelemetry(registry)
    measured = await Client.connect(
        client.service_client.config.target_host,
        data_converter=pydantic_data_converter,
        runtime=telemetry.runtime,
    )
    async with harness_with(measured, nats_url, tmp_path) as harness:
        await run_twice_replayed(harness, registry, telemetry)
    exposed = generate_latest(registry).decode()
    assert "temporal_worker_task_slots_available" in exposed  # the SDK's own metrics on the same registry
    assert "quantum_stage_duration_seconds_bucket{" in exposed


async def run_twice_replayed(harness: Harness, registry: CollectorRegistry, telemetry: TemporalTelemetry) -> None:
    request = {"project": "slugs", "prompt": "a slugify helper for titles", "requested_by": "alice"}
    # no sticky cache: every workflow task and every query replays the run from its first event
    async with new_worker(
        harness.client, harness.agents.activities(), task_queue=harness.task_queue, max_cached_workflows=0
    ):
        handle = await harness.start("CodeGenerationWorkflow", request, prefix="codegen")
        await handle.result()
        for _ in range(3):
            await handle.query("status")
        history = await handle.fetch_history()
    assert sum(1 for e in history.events if e.HasField("workflow_task_completed_event_attributes")) > 2
    assert sample(registry, "quantum_runs_started_total", **CODEGEN) == 1
    assert sample(registry, "quantum_runs_finished_total", status="succeeded", **CODEGEN) == 1
    assert sample(registry, "quantum_run_duration_seconds_count", **CODEGEN) == 1
    stages = sample(registry, "quantum_stage_duration_seconds_count", outcome="succeeded", **CODEGEN)
    assert stages == 4  # validate_request, generate_code, validate_code, fingerprint
    # and a replay of the whole history by another worker's replayer, on the same runtime
    replayer = new_replayer(runtime=telemetry.runtime)
    await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert sample(registry, "quantum_runs_started_total", **CODEGEN) == 1
