"""Scale-out on one machine: a three-server NATS cluster (JetStream streams with three replicas), two ``quantum
worker`` and two ``quantum bridge`` processes against one Temporal dev server.

Events are published (with retries, as any client should) while one worker and one NATS server are killed with
SIGKILL and started again. Then: every event started exactly one run, every run ended succeeded or failed with
its compensations done, none is missing, and each worker and each bridge did part of the work (from its metrics).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client, WorkflowExecutionStatus

from events.catalog import INBOUND, workflow_id
from events.envelope import new_event
from events.streams import EVENTS_STREAM, StreamLimits, ensure_streams
from tests.conftest import free_port
from tests.processes import NatsNode, Process, nats_cluster, publish_until_acknowledged
from workflows.models import RunStatusView

pytestmark = [pytest.mark.timeout(1200), pytest.mark.workflow]

EVENTS = int(os.environ.get("QUANTUM_SCALE_EVENTS", "300"))
UNSERVABLE_EVERY = 5
"""Every fifth request asks for what the offline provider refuses: that run fails and compensates."""
SERVABLE = "a slugify helper for titles"
UNSERVABLE = "an IBAN validator with country-specific check digits"


async def connected(urls: str) -> NATS:
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            nc = await nats.connect(servers=urls.split(","), connect_timeout=2, max_reconnect_attempts=-1)
            await ensure_streams(nc.jetstream(timeout=10), StreamLimits(replicas=3))
            return nc
        except Exception:
            assert asyncio.get_running_loop().time() < deadline, "the NATS cluster did not form"
            await asyncio.sleep(0.5)


async def test_two_workers_and_two_bridges_share_the_work_through_failures(
    tmp_path: Path, client: Client, temporal_address: str
) -> None:
    with nats_cluster(tmp_path / "nats") as nodes:
        urls = ",".join(node.url for node in nodes)
        nc = await connected(urls)
        task_queue = f"scale-{tmp_path.name}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
        base.update(
            QUANTUM_TEMPORAL_ADDRESS=temporal_address,
            QUANTUM_NATS_URL=urls,
            QUANTUM_TASK_QUEUE=task_queue,
            QUANTUM_STREAM_REPLICAS="3",
            QUANTUM_DATA_DIR=str(tmp_path / "data"),  # the workers' shared volume
            QUANTUM_BRIDGE_BATCH="4",  # small batches: both bridges fetch while events arrive
        )
        processes = [
            Process(name, command, base | {"QUANTUM_METRICS_PORT": str(free_port())}, tmp_path / f"{name}.log")
            for name, command in (("w1", "worker"), ("w2", "worker"), ("b1", "bridge"), ("b2", "bridge"))
        ]
        try:
            for process in processes:
                process.start()
            for process in processes:
                await asyncio.to_thread(process.wait_serving)
            ids = await publish_through_failures(nc, processes[0], nodes[1])
            await wait_for_every_run(client, task_queue, ids)
            await check_the_runs(client, task_queue, ids)
            for process in processes[:2]:  # w1's count is of its life since its restart
                done = process.metric("temporal_workflow_task_execution_latency_seconds_count") + process.metric(
                    "temporal_activity_execution_latency_seconds_count"
                )
                assert done > 0, f"{process.name} ran no workflow task and no activity"
            for process in processes[2:]:
                started = process.metric("quantum_bridge_events_total", outcome="started")
                assert started > 0, f"{process.name} started no run"
        finally:
            await nc.close()
            for process in processes:
                process.stop()


async def publish_through_failures(nc: NATS, worker: Process, node: NatsNode) -> list[str]:
    """Publish every event; a third of the way in, kill ``worker`` and ``node``; two thirds in, start both again."""
    kind = INBOUND["quantum.code.requested"]
    ids: list[str] = []
    for n in range(EVENTS):
        if n == EVENTS // 3:
            worker.kill()
            node.kill()
        if n == 2 * EVENTS // 3:
            node.start()
            worker.start()
            await asyncio.to_thread(worker.wait_serving)
            await asyncio.sleep(2)  # polling: the rest is shared with it
        prompt = UNSERVABLE if n % UNSERVABLE_EVERY == 0 else SERVABLE
        event = new_event(
            "quantum.code.requested",
            {"project": f"scale-{n}", "prompt": prompt, "requested_by": "alice"},
            source="tests",
        )
        await publish_until_acknowledged(nc, event.nats_subject, event.to_bytes(), event.id)
        ids.append(workflow_id(kind, event.id))
    info = await nc.jetstream(timeout=10).stream_info(EVENTS_STREAM)
    assert info.config.num_replicas == 3
    return ids


async def wait_for_every_run(client: Client, task_queue: str, ids: list[str], timeout: float = 900) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    expected = set(ids)
    while True:
        closed = {
            execution.id
            async for execution in client.list_workflows(f'TaskQueue="{task_queue}" AND ExecutionStatus!="Running"')
        }
        if expected <= closed:
            return
        left = len(expected - closed)
        assert asyncio.get_running_loop().time() < deadline, f"{left} of {len(ids)} runs did not end"
        await asyncio.sleep(2)


async def check_the_runs(client: Client, task_queue: str, ids: list[str]) -> None:
    executions = [execution async for execution in client.list_workflows(f'TaskQueue="{task_queue}"')]
    per_id = Counter(execution.id for execution in executions)
    assert set(per_id) == set(ids), "a run without an event, or an event without a run"
    assert max(per_id.values()) == 1, [i for i, n in per_id.items() if n > 1]  # none started twice
    statuses = Counter(execution.status for execution in executions)
    assert set(statuses) <= {WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.FAILED}, statuses
    refused = {ids[n] for n in range(0, len(ids), UNSERVABLE_EVERY)}
    for execution in executions:
        failed = execution.status == WorkflowExecutionStatus.FAILED
        assert failed == (execution.id in refused), execution.id
        if failed:
            view = await client.get_workflow_handle(execution.id).query("status", result_type=RunStatusView)
            assert all(c.outcome == "completed" for c in view.compensations), view.compensations
    print(f"\nscale-out: {len(ids)} events, {len(executions)} runs, {dict(statuses)}")
