"""Event tests: a fresh ``nats-server -js`` for each test (streams and consumers start empty), the real dev server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from temporalio.client import Client

from events.bridge import Bridge, BridgeConfig, Outcome
from events.envelope import CloudEvent, new_event
from events.streams import DLQ_STREAM, EVENTS_STREAM
from quantum.stack import NatsServer, TemporalDevServer
from tests.conftest import _ensure_streams, free_port
from tests.workflows.conftest import Harness, harness  # noqa: F401 - the fixture, shared

__all__ = ["Harness"]


@pytest.fixture
async def nats_url(tmp_path: Path) -> AsyncIterator[str]:
    """Overrides the session NATS: each event test starts from empty streams."""
    server = NatsServer(
        host="127.0.0.1",
        port=free_port(),
        store_dir=tmp_path / "nats",
        log_file=tmp_path / "nats.log",
        config_file=tmp_path / "nats.conf",
    )
    await server.start()
    try:
        await _ensure_streams(server.url)
        yield server.url
    finally:
        await server.stop()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def stoppable_temporal(tmp_path: Path) -> AsyncIterator[TemporalDevServer]:
    """A Temporal dev server of this test's own, on a SQLite file, that the test may stop and start again."""
    server = TemporalDevServer(
        host="127.0.0.1",
        port=free_port(),
        ui_port=None,
        db_file=tmp_path / "temporal.db",
        log_file=tmp_path / "temporal.log",
        headless=True,
    )
    try:
        yield server
    finally:
        await server.stop()


class RecordingBridge(Bridge):
    """The real bridge, remembering each message's outcome."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: list[tuple[str, Outcome]] = []

    async def handle(self, msg: Msg) -> Outcome:
        outcome = await super().handle(msg)
        self.outcomes.append((msg.headers.get("Nats-Msg-Id", "") if msg.headers else "", outcome))
        return outcome


@contextlib.asynccontextmanager
async def bridge_running(bridge: Bridge) -> AsyncIterator[Bridge]:
    stop = asyncio.Event()
    await bridge.ensure_consumer()
    task = asyncio.create_task(bridge.run(stop))
    try:
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def bridge_config(task_queue: str, **overrides: Any) -> BridgeConfig:
    options: dict[str, Any] = {"task_queue": task_queue, "consumer": "bridge", "ack_wait_seconds": 2.0}
    options.update(overrides)
    return BridgeConfig(**options)


async def publish(
    nc: NATS, event: CloudEvent | bytes, *, subject: str | None = None, msg_id: str | None = None
) -> None:
    raw = event.to_bytes() if isinstance(event, CloudEvent) else event
    subject = subject or (event.nats_subject if isinstance(event, CloudEvent) else "quantum.events.pipeline.requested")
    await nc.jetstream().publish(subject, raw, headers={"Nats-Msg-Id": msg_id or str(uuid.uuid4())})


def pipeline_event(**data: Any) -> CloudEvent:
    body = {"project": "events-app", "prompt": "a slugify helper for titles", "requested_by": "alice"}
    body.update(data)
    return new_event("quantum.pipeline.requested", body, source="tests")


async def wait_until(predicate: Any, *, timeout: float = 60, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.1)


async def settled(nc: NATS, consumer: str = "bridge") -> bool:
    """Every message the consumer was given is acknowledged or terminated."""
    info = await nc.jetstream().consumer_info(EVENTS_STREAM, consumer)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def dead_letters(nc: NATS) -> list[RawStreamMsg]:
    """Every message in the DLQ, oldest first (those replayed and removed are skipped)."""
    js = nc.jetstream()
    found: list[RawStreamMsg] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(DLQ_STREAM, seq=seq, subject="quantum.dlq.>", next=True)
        except NotFoundError:
            return found
        found.append(msg)
        seq = (msg.seq or seq) + 1


async def runs_with_id(client: Client, workflow_id: str) -> int:
    return len([wf async for wf in client.list_workflows(f"WorkflowId = '{workflow_id}'")])
