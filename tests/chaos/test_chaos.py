"""Chaos: processes killed with SIGKILL while work is in flight, and what the runs and the world look like after.

- The worker, killed at random moments of real pipelines (code, tests in the sandbox, scan, a JetStream stream and
  a directory, a deployed release, monitoring) and started again: every run ends succeeded, and no side effect is
  applied twice: each outbound event once by its idempotency key, one stream per run, one release host per run.
  The time from a worker's death to its activity running again is measured from the histories.
- The Temporal dev server, killed mid-run and started again on the same database: the runs resume and succeed.
- nats-server, killed while events are published (file store, ``sync_interval: always``) by a client that retries
  until acknowledged, and started again: no acknowledged event is lost, none starts two runs; then one event
  published 100 times at once starts one run.

The figures are printed (``pytest -s``). ``QUANTUM_CHAOS_RUNS`` and ``QUANTUM_CHAOS_KILLS`` make it larger;
``QUANTUM_CHAOS_SEED`` replays a schedule of kills.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from agents.infra import stream_name
from agents.workspace import run_dir_name
from events.catalog import INBOUND, workflow_id
from events.envelope import new_event
from events.streams import EVENTS_STREAM, ensure_streams
from quantum.stack import TemporalDevServer
from tests.cli.support import processes_mentioning
from tests.conftest import free_port
from tests.processes import NatsNode, Process, publish_until_acknowledged
from workflows.models import PipelineResult

pytestmark = [pytest.mark.timeout(1500), pytest.mark.workflow]

RUNS = int(os.environ.get("QUANTUM_CHAOS_RUNS", "4"))
KILLS = int(os.environ.get("QUANTUM_CHAOS_KILLS", "3"))
SEED = int(os.environ.get("QUANTUM_CHAOS_SEED", str(int(time.time()))))
INFRA = [{"kind": "directory", "name": "assets"}, {"kind": "stream", "name": "audit"}]
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


async def restarts_after_kills(handle: WorkflowHandle[Any, Any], kills: list[float]) -> list[float]:
    """For each activity attempt that started again after a kill: seconds from the last kill before it."""
    delays = []
    for event in (await handle.fetch_history()).events:
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            continue
        if event.activity_task_started_event_attributes.attempt < 2:
            continue
        at = event.event_time.ToDatetime().timestamp()
        before = [k for k in kills if k <= at]
        if before:
            delays.append(at - max(before))
    return delays


async def test_the_worker_killed_at_random_moments(
    tmp_path: Path, client: Client, temporal_address: str, nats_url: str
) -> None:
    rng = random.Random(SEED)
    env = base_env(tmp_path, temporal_address, nats_url)
    worker = process("worker", "worker", env, tmp_path)
    worker.start()
    await asyncio.to_thread(worker.wait_serving)
    handles = [
        await client.start_workflow(
            "DevSecOpsPipelineWorkflow",
            {"project": f"chaos{n}", "prompt": PROMPT, "requested_by": "alice", "infrastructure": INFRA},
            id=f"pipeline-chaos-{tmp_path.name}-{n}",
            task_queue=env["QUANTUM_TASK_QUEUE"],
            result_type=PipelineResult,
        )
        for n in range(RUNS)
    ]
    kills: list[float] = []
    try:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(2, 10))
            worker.kill()
            kills.append(time.time())
            worker.start()
            await asyncio.to_thread(worker.wait_serving)
        statuses = await ended(handles)
        views = {h.id: await h.query("status") for h in handles}
        side_effects = await count_side_effects(handles, nats_url, env)
    finally:
        worker.stop()
    succeeded = [i for i, s in statuses.items() if s == WorkflowExecutionStatus.COMPLETED]
    compensated = [
        i
        for i, s in statuses.items()
        if s == WorkflowExecutionStatus.FAILED and all(c["outcome"] == "completed" for c in views[i]["compensations"])
    ]
    delays = [d for h in handles for d in await restarts_after_kills(h, kills)]
    print(
        f"\nchaos (seed {SEED}): {RUNS} runs, {len(kills)} kills of the worker: {len(succeeded)} succeeded, "
        f"{len(compensated)} compensated; duplicates {side_effects['duplicates']}; "
        f"death to retry elsewhere: {describe(delays)}"
    )
    assert len(succeeded) + len(compensated) == RUNS, {i: (s, views[i]["error"]) for i, s in statuses.items()}
    assert side_effects["duplicates"] == 0, side_effects


def describe(delays: list[float]) -> str:
    if not delays:
        return "no activity was running at a kill"
    return f"median {statistics.median(delays):.1f} s, max {max(delays):.1f} s over {len(delays)} retried attempts"


async def count_side_effects(
    handles: list[WorkflowHandle[Any, Any]], nats_url: str, env: dict[str, str]
) -> dict[str, Any]:
    """Outbound events by idempotency key, streams per run, release hosts per run: each must be one."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        info = await js.stream_info(EVENTS_STREAM)
        ids: Counter[str] = Counter()
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(EVENTS_STREAM, seq)
            except Exception:  # a gap (a message dropped by retention): nothing to count
                continue
            event = json.loads(msg.data or b"{}")
            if any(str(event.get("data", {}).get("pipeline_id", "")) == h.id for h in handles):
                ids[str(event["id"])] += 1
        streams = {info.config.name for info in await js.streams_info()}
    finally:
        await nc.close()
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    per_run_streams = {
        h.id: sum(1 for s in streams if s == stream_name(f"chaos{n}", "audit")) for n, h in enumerate(handles)
    }
    releases = {
        h.id: len([line for line in processes_mentioning(run_dir_name(h.id)) if "agents.release_server" in line])
        for h in handles
    }
    duplicates += sum(n - 1 for n in per_run_streams.values() if n > 1) + sum(n - 1 for n in releases.values() if n > 1)
    return {"events": sum(ids.values()), "duplicates": duplicates, "streams": per_run_streams, "releases": releases}


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
            assert asyncio.get_running_loop().time() < deadline, f"{twins:g} of 99 copies handled"
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
