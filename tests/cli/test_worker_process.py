"""``quantum worker`` and ``quantum bridge`` as the processes a cluster runs: against given servers, starting
nothing, refusing clearly when a server is away, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from tests.cli.support import QUANTUM, answers, one_line_error, quantum
from tests.conftest import free_port
from tests.workflows.conftest import HTTP_PROMPT, wait_for
from workflows.models import PipelineResult

pytestmark = pytest.mark.timeout(300)


def env_for(tmp_path: Path, temporal: str, nats_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env.update(
        QUANTUM_DATA_DIR=str(tmp_path / "data"),
        QUANTUM_TEMPORAL_ADDRESS=temporal,
        QUANTUM_NATS_URL=nats_url,
        QUANTUM_METRICS_PORT=str(free_port()),
        QUANTUM_TASK_QUEUE=f"worker-{tmp_path.name}",
        COLUMNS="200",
    )
    return env


@pytest.mark.parametrize("command", ["worker", "bridge"])
def test_an_unreachable_temporal_is_one_clear_error(command: str, tmp_path: Path, nats_url: str) -> None:
    env = env_for(tmp_path, f"127.0.0.1:{free_port()}", nats_url)
    done = quantum(env, command, timeout=60)
    assert done.returncode == 1
    assert "does not answer" in one_line_error(done) and "QUANTUM_TEMPORAL_ADDRESS" in done.stderr
    assert not list((tmp_path / "data").glob("run/*.json"))  # nothing embedded was started


def test_an_unreachable_nats_is_one_clear_error(tmp_path: Path, temporal_address: str) -> None:
    env = env_for(tmp_path, temporal_address, f"nats://127.0.0.1:{free_port()}")
    done = quantum(env, "worker", timeout=60)
    assert done.returncode == 1
    assert "NATS at" in one_line_error(done) and "QUANTUM_NATS_URL" in done.stderr


async def test_sigterm_drains_the_running_activity(
    tmp_path: Path, temporal_address: str, nats_url: str, client: Client
) -> None:
    """SIGTERM while the sandboxed tests run: the worker stops polling, lets that activity finish and report its
    result, then exits 0; the run goes on with the next worker."""
    env = env_for(tmp_path, temporal_address, nats_url)
    metrics_port = int(env["QUANTUM_METRICS_PORT"])
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([str(QUANTUM), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            if answers(metrics_port):
                break
            await asyncio.sleep(0.1)
        assert answers(metrics_port), (tmp_path / "worker.log").read_text()
        request = {"project": "drain", "prompt": HTTP_PROMPT, "requested_by": "alice"}
        handle = await client.start_workflow(
            "DevSecOpsPipelineWorkflow",
            request,
            id=f"pipeline-drain-{tmp_path.name}",
            task_queue=env["QUANTUM_TASK_QUEUE"],
            result_type=PipelineResult,
        )
        await wait_for(handle, lambda v: v.stages.get("execute_tests") == "running", timeout=120)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 120)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    output = (tmp_path / "worker.log").read_text()
    assert code == 0, output
    assert "draining" in output and "worker stopped" in output
    history = await handle.fetch_history()
    names = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    completed = [
        names[e.activity_task_completed_event_attributes.scheduled_event_id]
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    ]
    assert "testgen.execute_tests" in completed, completed  # finished, not cancelled or timed out
    await handle.terminate("test over")


async def test_sigterm_stops_the_bridge_with_nothing_left_unacknowledged(
    tmp_path: Path, temporal_address: str, client: Client
) -> None:
    """SIGTERM while events stream in: the bridge stops fetching, settles what it holds and exits 0; every event it
    took is acknowledged (none left in flight on the consumer), and it took some but not the rest."""
    import contextlib

    import nats

    from events.catalog import INBOUND, workflow_id
    from events.envelope import new_event
    from events.streams import EVENTS_STREAM
    from tests.conftest import nats_server

    with contextlib.ExitStack() as servers:
        nats_url = await asyncio.to_thread(servers.enter_context, nats_server(tmp_path / "nats"))  # its own bus
        env = env_for(tmp_path, temporal_address, nats_url)
        env["QUANTUM_BRIDGE_BATCH"] = "8"
        log = (tmp_path / "bridge.log").open("w")
        proc = subprocess.Popen([str(QUANTUM), "bridge"], env=env, stdout=log, stderr=subprocess.STDOUT)
        nc = await nats.connect(nats_url)
        kind = INBOUND["quantum.code.requested"]
        ids = []
        try:
            for _ in range(300):
                if answers(int(env["QUANTUM_METRICS_PORT"])):
                    break
                await asyncio.sleep(0.1)
            for n in range(40):
                event = new_event(
                    "quantum.code.requested",
                    {"project": f"drain{n}", "prompt": "a slugify helper", "requested_by": "ann"},
                    source="tests",
                )
                await nc.jetstream().publish(event.nats_subject, event.to_bytes(), headers={"Nats-Msg-Id": event.id})
                ids.append(workflow_id(kind, event.id))
                if n == 20:
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.sleep(0.2)
            code = await asyncio.to_thread(proc.wait, 60)
            info = await nc.jetstream().consumer_info(EVENTS_STREAM, "quantum-bridge")
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
            await nc.close()
    output = (tmp_path / "bridge.log").read_text()
    assert code == 0, output
    assert info.num_ack_pending == 0, info  # nothing it took is left in flight
    started = [i for i in ids if await exists(client, i)]
    assert 0 < len(started) < len(ids), len(started)  # it took some, then stopped taking
    assert info.num_pending == len(ids) - len(started)  # the rest waits for the next bridge


async def exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except Exception:
        return False
    return True
