"""Chaos: processes killed with SIGKILL while work is in flight, and what the runs and the world look like after.

- A worker of two, killed at random moments of real pipelines (code, tests in the sandbox, scan, a JetStream stream
  and a directory, a deployed release, monitoring) and started again, by :func:`quantum.chaos.bench_chaos` (what
  ``quantum bench chaos`` runs): every run ends succeeded or compensated, no side effect is applied twice or lost
  (each outbound event once by its idempotency key, one release host per run, its stream, directory, release record
  and monitoring files), no process is left behind, and the time from a worker's death to its activity's next
  attempt on a live worker is measured.
- The Temporal dev server, killed mid-run and started again on the same database: the runs resume and succeed.
- nats-server, killed while events are published (file store, ``sync_interval: always``) by a client that retries
  until acknowledged, and started again: no acknowledged event is lost, none starts two runs; then one event
  published 100 times at once starts one run.

The figures are printed (``pytest -s``). ``QUANTUM_CHAOS_RUNS`` and ``QUANTUM_CHAOS_KILLS`` make it larger;
``QUANTUM_CHAOS_SEED`` replays a schedule of kills.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from events.bridge import Outcome
from events.catalog import INBOUND, workflow_id
from events.envelope import new_event
from events.streams import EVENTS_STREAM, ensure_streams
from quantum.chaos import ChaosConfig, bench_chaos
from quantum.stack import TemporalDevServer
from tests.conftest import free_port
from tests.processes import NatsNode, Process, publish_until_acknowledged
from workflows.models import PipelineResult

pytestmark = [pytest.mark.timeout(1500), pytest.mark.workflow]

RUNS = int(os.environ.get("QUANTUM_CHAOS_RUNS", "4"))
KILLS = int(os.environ.get("QUANTUM_CHAOS_KILLS", "3"))
SEED = int(os.environ.get("QUANTUM_CHAOS_SEED", str(int(time.time()))))
PROMPT = "an HTTP JSON service with a health endpoint"


def base_env(tmp_path: Path, temporal: str, nats_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env.update(
        QUANTUM_TEMPORAL_ADDRESS=temporal,
        QUANTUM_NATS_URL=nats_url,
        QUANTUM_TASK_QUEUE=f"chaos-{tmp_path.name}",
        QUANTUM_DATA_DIR=str(tmp_path / "data"),
    )
    return env


def process(name: str, command: str, env: dict[str, str], tmp_path: Path) -> Process:
    return Process(name, command, env | {"QUANTUM_METRICS_PORT": str(free_port())}, tmp_path / f"{name}.log")


async def ended(handles: list[WorkflowHandle[Any, Any]], timeout: float = 900) -> dict[str, WorkflowExecutionStatus]:
    """Each run's final status, once every one has closed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        statuses = {h.id: (await h.describe()).status for h in handles}
        if all(s != WorkflowExecutionStatus.RUNNING for s in statuses.values()):
            return {k: v for k, v in statuses.items() if v is not None}
        assert asyncio.get_running_loop().time() < deadline, statuses
        await asyncio.sleep(1)


async def test_a_worker_killed_at_random_moments_duplicates_nothing_and_loses_nothing() -> None:
    report = await bench_chaos(ChaosConfig(runs=RUNS, kills=KILLS, seed=SEED))
    print("\nchaos: " + "; ".join(f"{figure} {value}" for figure, value in report.rows()))
    effects = report.effects
    assert report.kills, report.config  # a kill happened while runs were in flight
    assert report.endings["succeeded"] + report.endings["compensated"] == RUNS, report.outcomes
    assert effects.duplicates.total() == 0, effects.details
    assert effects.losses.total() == 0, effects.details
    assert effects.leftovers.total() == 0, effects.details
    assert effects.events >= RUNS * 3  # at least started, one stage, and how it ended: the counting saw the bus
    assert report.orphans == []
    assert report.failover_seconds, report.failovers  # a kill hit a running activity and its next attempt was seen
    assert all(seconds > 0 for seconds in report.failover_seconds), report.failovers
    assert report.ok


async def test_the_temporal_server_killed_mid_run_resumes_from_its_database(tmp_path: Path, nats_url: str) -> None:
    port = free_port()

    def server() -> TemporalDevServer:
        return TemporalDevServer(
            host="127.0.0.1",
            port=port,
            ui_port=None,
            headless=True,
            db_file=tmp_path / "temporal.db",
            log_file=tmp_path / "temporal.log",
        )

    temporal = server()
    await temporal.start()
    env = base_env(tmp_path, temporal.address, nats_url)
    worker = process("worker", "worker", env, tmp_path)
    try:
        worker.start()
        await asyncio.to_thread(worker.wait_serving)
        client = await Client.connect(temporal.address, data_converter=pydantic_data_converter)
        handles = [
            await client.start_workflow(
                "DevSecOpsPipelineWorkflow",
                {"project": f"resume{n}", "prompt": PROMPT, "requested_by": "alice"},
                id=f"pipeline-resume-{n}",
                task_queue=env["QUANTUM_TASK_QUEUE"],
                result_type=PipelineResult,
            )
            for n in range(2)
        ]
        await asyncio.sleep(4)  # mid-run: code generated, tests running
        assert temporal.pid is not None
        os.kill(temporal.pid, signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.sleep(2)
        temporal = server()
        await temporal.start()
        restarted = time.monotonic() - killed
        statuses = await ended(handles)
        print(f"\nchaos: Temporal killed mid-run, back in {restarted:.1f} s; runs: {Counter(statuses.values())}")
        assert set(statuses.values()) == {WorkflowExecutionStatus.COMPLETED}
    finally:
        worker.stop()
        await temporal.stop()


async def test_nats_killed_while_events_are_published_loses_none_and_doubles_none(
    tmp_path: Path, temporal_address: str, client: Client
) -> None:
    node = NatsNode("solo", free_port(), 0, tmp_path / "nats")
    node.store.mkdir(parents=True)
    node.start()
    env = base_env(tmp_path, temporal_address, node.url)
    worker, bridge = process("worker", "worker", env, tmp_path), process("bridge", "bridge", env, tmp_path)
    nc = await nats.connect(node.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        await ensure_streams(nc.jetstream())
        for p in (worker, bridge):
            p.start()
        for p in (worker, bridge):
            await asyncio.to_thread(p.wait_serving)
        kind = INBOUND["quantum.code.requested"]
        acknowledged: list[str] = []
        restart: asyncio.Task[None] | None = None
        for n in range(60):
            if n == 20:  # killed with events in flight; started again two seconds later, while the client retries
                node.kill()
                restart = asyncio.create_task(restart_after(node, 2.0))
            event = new_event(
                "quantum.code.requested",
                {"project": f"bus{n}", "prompt": "a slugify helper for titles", "requested_by": "alice"},
                source="tests",
            )
            await publish_until_acknowledged(nc, event.nats_subject, event.to_bytes(), event.id)
            acknowledged.append(workflow_id(kind, event.id))
        assert restart is not None and restart.done()
        await wait_started([client.get_workflow_handle(i) for i in acknowledged])
        await asyncio.sleep(3)  # redeliveries of what was handled while the server died have settled
        before = bridge.metric("quantum_bridge_events_total", outcome="duplicate")
        # one event, 100 copies at once (each its own message): one run
        twin = new_event(
            "quantum.code.requested",
            {"project": "twin", "prompt": "a slugify helper", "requested_by": "ann"},
            source="tests",
        )
        await asyncio.gather(
            *(publish_until_acknowledged(nc, twin.nats_subject, twin.to_bytes(), f"{twin.id}-{n}") for n in range(100))
        )
        expected = [*acknowledged, workflow_id(kind, twin.id)]
        handles = [client.get_workflow_handle(i) for i in expected]
        await wait_started(handles)
        statuses = await ended(handles)
        runs = Counter([e.id async for e in client.list_workflows(f'TaskQueue="{env["QUANTUM_TASK_QUEUE"]}"')])
        deadline = asyncio.get_running_loop().time() + 60
        while (twins := bridge.metric("quantum_bridge_events_total", outcome="duplicate") - before) < 99:
            if asyncio.get_running_loop().time() > deadline:
                info = await nc.jetstream().consumer_info(EVENTS_STREAM, "quantum-bridge")
                outcomes = {o: bridge.metric("quantum_bridge_events_total", outcome=o) for o in Outcome}
                raise AssertionError(
                    f"{twins:g} of 99 copies handled; bridge outcomes {outcomes}; consumer: "
                    f"{info.num_pending} pending, {info.num_ack_pending} unacknowledged, "
                    f"{info.num_redelivered} redelivered"
                )
            await asyncio.sleep(0.5)
        redelivered = before
    finally:
        await nc.close()
        for p in (worker, bridge):
            p.stop()
        node.stop()
    print(
        f"\nchaos: nats-server killed while 60 events were published: {len(acknowledged)} acknowledged, "
        f"{len(set(runs) & set(acknowledged))} started, {len(set(acknowledged) - set(runs))} lost, "
        f"{redelivered:g} redelivered after the restart and recognised; 100 copies of one event: "
        f"{runs[expected[-1]]} run, {twins:g} refused as duplicates"
    )
    assert set(runs) == set(expected), set(expected) ^ set(runs)  # none lost, none extra
    assert max(runs.values()) == 1  # none started twice
    assert set(statuses.values()) == {WorkflowExecutionStatus.COMPLETED}
    assert twins == 99


async def restart_after(node: NatsNode, seconds: float) -> None:
    await asyncio.sleep(seconds)
    node.start()


async def wait_started(handles: list[WorkflowHandle[Any, Any]], timeout: float = 120) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    for handle in handles:
        while True:
            try:
                await handle.describe()
                break
            except Exception:
                assert asyncio.get_running_loop().time() < deadline, f"{handle.id} never started"
                await asyncio.sleep(0.5)
