"""Benchmarks, each reported against a baseline measured in the same run on the same embedded stack.

``events``: how fast the bridge turns events into workflow starts, against raw ``start_workflow`` calls, and the
publish-to-start latency (p50/p99) at a steady event rate.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from events.bridge import Bridge, Outcome
from events.envelope import CloudEvent, new_event
from events.streams import EVENTS_STREAM, ensure_streams
from quantum.app import connect_nats
from quantum.client import connect
from quantum.settings import Settings
from quantum.stack import EmbeddedStack, free_port

REQUEST = {"project": "bench", "prompt": "a slugify helper", "requested_by": "bench"}


@dataclass
class EventsReport:
    events: int
    raw_starts_per_second: float
    bridge_starts_per_second: float
    rate: float
    latency_samples: int
    latency_p50_ms: float
    latency_p99_ms: float
    started: int
    notes: list[str] = field(default_factory=list)

    @property
    def throughput_ratio(self) -> float:
        return self.bridge_starts_per_second / self.raw_starts_per_second if self.raw_starts_per_second else 0.0

    def rows(self) -> list[tuple[str, str, str]]:
        return [
            ("raw start_workflow (baseline)", f"{self.raw_starts_per_second:.1f} starts/s", "1.00"),
            ("through the bridge", f"{self.bridge_starts_per_second:.1f} starts/s", f"{self.throughput_ratio:.2f}"),
            (f"publish-to-start p50 at {self.rate:g}/s", f"{self.latency_p50_ms:.1f} ms", ""),
            (f"publish-to-start p99 at {self.rate:g}/s", f"{self.latency_p99_ms:.1f} ms", ""),
        ]


class _TimedBridge(Bridge):
    """The real bridge, noting when each event's run was started."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started_at: dict[str, float] = {}

    async def handle(self, msg: Msg) -> Outcome:
        outcome = await super().handle(msg)
        if outcome is Outcome.STARTED and msg.headers:
            self.started_at[msg.headers["Nats-Msg-Id"]] = time.perf_counter()
        return outcome


async def _raw_starts(client: Client, count: int, task_queue: str, concurrency: int) -> float:
    ids = [f"bench-raw-{uuid.uuid4()}" for _ in range(count)]
    gate = asyncio.Semaphore(concurrency)

    async def start(workflow_id: str) -> None:
        async with gate:
            await client.start_workflow(
                "CodeGenerationWorkflow",
                REQUEST,
                id=workflow_id,
                task_queue=task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )

    began = time.perf_counter()
    await asyncio.gather(*(start(i) for i in ids))
    return count / (time.perf_counter() - began)


def _event() -> CloudEvent:
    return new_event("quantum.code.requested", REQUEST, source="quantum-bench")


async def _wait_started(bridge: _TimedBridge, ids: set[str], timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not ids <= bridge.started_at.keys():
        if time.perf_counter() > deadline:
            missing = len(ids - bridge.started_at.keys())
            raise RuntimeError(f"{missing} of {len(ids)} events were not started within {timeout:g} s")
        await asyncio.sleep(0.01)


def _percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def bench_events(
    *, events: int = 300, rate: float = 100.0, seconds: float = 10.0, batch: int = 64
) -> EventsReport:
    """Run the events benchmark on a fresh embedded stack of its own (temporary data, free ports)."""
    with tempfile.TemporaryDirectory(prefix="quantum-bench-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            temporal_address=f"127.0.0.1:{free_port()}",
            temporal_ui_port=free_port(),
            nats_url=f"nats://127.0.0.1:{free_port()}",
            bridge_batch=batch,
            _env_file=None,
        )
        async with EmbeddedStack(settings) as stack:
            client = await connect(settings, address=stack.temporal_address)
            nc = await connect_nats(stack.nats_url)
            try:
                js = nc.jetstream()
                await ensure_streams(js, settings.stream_limits())
                task_queue = f"bench-{uuid.uuid4()}"  # no worker: the runs are started, which is what is measured
                raw = await _raw_starts(client, events, task_queue, concurrency=batch)

                config = settings.bridge_config()
                config = type(config)(**{**config.__dict__, "task_queue": task_queue})
                bridge = _TimedBridge(nc, client, config)
                await bridge.ensure_consumer()
                backlog = [_event() for _ in range(events)]
                for event in backlog:
                    await js.publish(event.nats_subject, event.to_bytes(), headers={"Nats-Msg-Id": event.id})
                stop = asyncio.Event()
                began = time.perf_counter()
                task = asyncio.create_task(bridge.run(stop))
                await _wait_started(bridge, {e.id for e in backlog}, timeout=300)
                through_bridge = events / (time.perf_counter() - began)

                published_at: dict[str, float] = {}
                interval = 1.0 / rate
                steady = int(rate * seconds)
                start = time.perf_counter()
                for n in range(steady):
                    await asyncio.sleep(max(0.0, start + n * interval - time.perf_counter()))
                    event = _event()
                    published_at[event.id] = time.perf_counter()
                    await js.publish(event.nats_subject, event.to_bytes(), headers={"Nats-Msg-Id": event.id})
                await _wait_started(bridge, set(published_at), timeout=120)
                stop.set()
                await task
                latencies = [(bridge.started_at[i] - t) * 1000 for i, t in published_at.items()]
                info = await js.stream_info(EVENTS_STREAM)
            finally:
                await nc.close()
    return EventsReport(
        events=events,
        raw_starts_per_second=raw,
        bridge_starts_per_second=through_bridge,
        rate=rate,
        latency_samples=len(latencies),
        latency_p50_ms=_percentile(latencies, 50),
        latency_p99_ms=_percentile(latencies, 99),
        started=len(bridge.started_at),
        notes=[f"{info.state.messages} events in {EVENTS_STREAM}; SQLite WAL store; {batch} events per fetch"],
    )
