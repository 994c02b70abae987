"""``quantum bench events``: the bridge against raw ``start_workflow`` calls, on the same servers, in the same run.

Each repetition measures, with no worker polling (the starts are what is measured):

1. throughput: N raw starts at the bridge's batch concurrency, then N events through the bridge (starts/s);
2. latency at a steady rate: each raw ``start_workflow`` call's own time, then each event's time from its publish to
   its run's start through the bridge, at the same rate for the same time (p50/p99);
3. the same through the bridge with a share of duplicates mixed in: each one a second copy of an event, stored by
   JetStream (published without the de-duplication header, as a redelivery or a careless client would) so that the
   bridge itself must recognise the run as already started.

The events travel on a stream of the bench's own, configured as ``QUANTUM_EVENTS`` is but on subjects of its own, and
deleted afterwards: on a cluster of one's own, a deployment's bridge never sees them. There, the runs the bench
started (which no worker polls) are terminated at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from events.bridge import Bridge, Outcome
from events.catalog import EventType, workflow_id
from events.envelope import CloudEvent, new_event, subject_for
from events.streams import EVENTS_STREAM, StreamLimits, stream_configs
from quantum.bench.report import Progress, Report, percentile, quiet
from quantum.bench.stack import BenchStack, bench_stack, on
from quantum.settings import Settings

REQUEST = {"project": "bench", "prompt": "a slugify helper", "requested_by": "bench"}
THROUGHPUT_TARGET = 0.9
"""The bridge at no less than 90 % of raw start_workflow throughput."""
COPY_HEADER = "Bench-Copy-Of"
LATENCY_TARGET = 2.0
"""Publish-to-start p99 no more than twice the raw start call's own p99 at the same rate."""
BENCH_STREAM = "QUANTUM_BENCH_"
"""The bench's own streams are named this, then a tag; their subjects are ``quantum.bench.<tag>.<noun>.<verb>``."""
TERMINATE_CONCURRENCY = 64


@dataclasses.dataclass(frozen=True)
class _Lane:
    """Where the bench's events travel: its own stream and subject prefix."""

    stream: str
    prefix: str


@asynccontextmanager
async def _bench_stream(js: JetStreamContext, limits: StreamLimits) -> AsyncIterator[_Lane]:
    """A stream configured as ``QUANTUM_EVENTS`` (storage, duplicate window, limits), on subjects that no
    deployment's bridge consumes; deleted when the bench is done with it."""
    tag = uuid.uuid4().hex[:12]
    lane = _Lane(f"{BENCH_STREAM}{tag}", f"quantum.bench.{tag}.")
    (events,) = [config for config in stream_configs(limits) if config.name == EVENTS_STREAM]
    await js.add_stream(
        dataclasses.replace(
            events, name=lane.stream, subjects=[lane.prefix + ">"], description="quantum bench events (deleted after)"
        )
    )
    try:
        yield lane
    finally:
        await js.delete_stream(lane.stream)


class _TimedBridge(Bridge):
    """The real bridge, noting when each event's run was started and what became of each message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started_at: dict[str, float] = {}
        self.outcomes: Counter[str] = Counter()
        self.workflow_ids: list[str] = []

    async def _act(self, kind: EventType, event: CloudEvent, data: BaseModel) -> Outcome:
        self.workflow_ids.append(workflow_id(kind, event.id))  # before the call: one that timed out may have started
        return await super()._act(kind, event, data)

    async def handle(self, msg: Msg) -> Outcome:
        outcome = await super().handle(msg)
        self.outcomes[outcome.value] += 1
        headers = msg.headers or {}
        event_id = headers.get("Nats-Msg-Id") or headers.get(COPY_HEADER)
        if outcome is Outcome.STARTED and event_id:
            self.started_at.setdefault(event_id, time.perf_counter())
        return outcome


def _event() -> CloudEvent:
    return new_event("quantum.code.requested", REQUEST, source="quantum-bench")


async def _publish(js: JetStreamContext, lane: _Lane, event: CloudEvent, *, deduplicated: bool = True) -> None:
    headers = {"Nats-Msg-Id": event.id} if deduplicated else {COPY_HEADER: event.id}
    await js.publish(subject_for(event.type, lane.prefix), event.to_bytes(), headers=headers)


async def _raw_start(client: Client, task_queue: str, started: list[str]) -> None:
    run_id = f"bench-raw-{uuid.uuid4()}"
    started.append(run_id)  # before the call: one that timed out may have started
    await client.start_workflow(
        "CodeGenerationWorkflow",
        REQUEST,
        id=run_id,
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )


async def _raw_burst(client: Client, count: int, task_queue: str, concurrency: int, started: list[str]) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def start() -> None:
        async with gate:
            await _raw_start(client, task_queue, started)

    began = time.perf_counter()
    await asyncio.gather(*(start() for _ in range(count)))
    return count / (time.perf_counter() - began)


async def _steady(rate: float, seconds: float, act: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Call ``act(n)`` at ``rate`` per second for ``seconds``, each on schedule (not after the one before)."""
    interval, count = 1.0 / rate, max(1, int(rate * seconds))
    start = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    for n in range(count):
        await asyncio.sleep(max(0.0, start + n * interval - time.perf_counter()))
        tasks.append(asyncio.create_task(act(n)))
    await asyncio.gather(*tasks)


async def _wait_started(bridge: _TimedBridge, ids: set[str], timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not ids <= bridge.started_at.keys():
        if time.perf_counter() > deadline:
            missing = len(ids - bridge.started_at.keys())
            raise RuntimeError(f"{missing} of {len(ids)} events were not started within {timeout:g} s")
        await asyncio.sleep(0.01)


async def _wait_handled(bridge: _TimedBridge, count: int, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while sum(bridge.outcomes.values()) < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the bridge handled {sum(bridge.outcomes.values())} of {count} messages")
        await asyncio.sleep(0.01)


async def bench_events(
    *,
    events: int = 300,
    rate: float = 100.0,
    seconds: float = 10.0,
    batch: int = 64,
    duplicates: float = 0.2,
    repetitions: int = 3,
    progress: Progress = quiet,
    cluster: Settings | None = None,
) -> Report:
    """Run the events benchmark on a fresh embedded stack of its own (temporary data, free ports), or on the
    ``cluster`` those settings name."""
    report = Report(
        "events",
        {
            "events": events,
            "rate": rate,
            "seconds": seconds,
            "batch": batch,
            "duplicates": duplicates,
            "repetitions": repetitions,
            "on": on(cluster),
        },
    )
    started: list[str] = []
    async with bench_stack(cluster, bridge_batch=batch) as bench:
        try:
            async with _bench_stream(bench.nc.jetstream(), bench.settings.stream_limits()) as lane:
                warm_up = f"bench-warm-up-{uuid.uuid4()}"
                await _raw_burst(bench.client, min(events, 100), warm_up, batch, started)
                for repetition in range(1, repetitions + 1):
                    where = _Where(bench, lane, started)
                    await _repetition(where, report, repetition, events, rate, seconds, duplicates, progress)
        finally:
            if bench.on_cluster:
                await _terminate(bench.client, started, progress)
    store = "the cluster's store" if bench.on_cluster else "SQLite store"
    report.notes.append(
        f"{store}; the bridge holds up to {batch} events at a time; no worker polls the runs; a burst of raw "
        "starts warms the server up first; the events travel on a stream of the bench's own, deleted after"
    )
    if bench.on_cluster:
        runs = len(set(started))
        report.notes.append(f"the {runs} runs the bench started were terminated at the end")
    return report


async def _terminate(client: Client, run_ids: list[str], progress: Progress) -> None:
    """Terminate the runs the bench started on a cluster (no worker polls their queues); one already gone is fine."""
    gate = asyncio.Semaphore(TERMINATE_CONCURRENCY)
    unique, done = list(dict.fromkeys(run_ids)), 0

    async def terminate(run_id: str) -> None:
        nonlocal done
        async with gate:
            try:
                await client.get_workflow_handle(run_id).terminate(reason="quantum bench: measured, never to run")
            except RPCError as err:
                if err.status is not RPCStatusCode.NOT_FOUND:
                    raise
        done += 1
        progress("terminating the bench's runs", done, len(unique))

    await asyncio.gather(*(terminate(run_id) for run_id in unique))


@dataclasses.dataclass
class _Where:
    """The servers, the bench's stream, and the ids of the runs started so far (to terminate on a cluster)."""

    bench: BenchStack
    lane: _Lane
    started: list[str]


async def _repetition(
    where: _Where,
    report: Report,
    repetition: int,
    events: int,
    rate: float,
    seconds: float,
    duplicates: float,
    progress: Progress,
) -> None:
    bench, lane, started = where.bench, where.lane, where.started
    js = bench.nc.jetstream()
    task_queue = f"bench-{uuid.uuid4()}"
    steps, step = 5, 0

    def tick(what: str) -> None:
        nonlocal step
        step += 1
        progress(f"{repetition}: {what}", step, steps)

    raw = await _raw_burst(bench.client, events, task_queue, bench.settings.bridge_batch, started)
    tick("raw starts")
    config = dataclasses.replace(
        bench.settings.bridge_config(),
        task_queue=task_queue,
        stream=lane.stream,
        subject_prefix=lane.prefix,
        inbound_subjects=(),
    )
    bridge = _TimedBridge(bench.nc, bench.client, config)
    await bridge.ensure_consumer()
    backlog = [_event() for _ in range(events)]
    for event in backlog:
        await _publish(js, lane, event)
    stop = asyncio.Event()
    began = time.perf_counter()
    task = asyncio.create_task(bridge.run(stop))
    try:
        await _wait_started(bridge, {e.id for e in backlog}, timeout=300)
        through_bridge = events / (time.perf_counter() - began)
        tick("through the bridge")

        raw_calls: list[float] = []

        async def raw_call(_n: int) -> None:
            called = time.perf_counter()
            await _raw_start(bench.client, task_queue, started)
            raw_calls.append((time.perf_counter() - called) * 1000)

        await _steady(rate, seconds, raw_call)
        tick("raw start calls at a steady rate")

        published_at: dict[str, float] = {}

        async def publish(_n: int) -> None:
            event = _event()
            published_at[event.id] = time.perf_counter()
            await _publish(js, lane, event)

        await _steady(rate, seconds, publish)
        await _wait_started(bridge, set(published_at), timeout=120)
        steady = [(bridge.started_at[i] - t) * 1000 for i, t in published_at.items()]
        tick("through the bridge at a steady rate")

        mixed_at: dict[str, float] = {}
        copies = 0
        handled_before = sum(bridge.outcomes.values())
        duplicates_before = bridge.outcomes[Outcome.DUPLICATE.value]
        chooser = random.Random(repetition)  # noqa: S311 - which events get a copy, not a secret

        async def publish_mixed(_n: int) -> None:
            nonlocal copies
            event = _event()
            mixed_at[event.id] = time.perf_counter()
            await _publish(js, lane, event)
            if chooser.random() < duplicates:
                copies += 1
                await _publish(js, lane, event, deduplicated=False)

        await _steady(rate, seconds, publish_mixed)
        await _wait_started(bridge, set(mixed_at), timeout=120)
        await _wait_handled(bridge, handled_before + len(mixed_at) + copies, timeout=120)
        mixed = [(bridge.started_at[i] - t) * 1000 for i, t in mixed_at.items()]
        recognised = bridge.outcomes[Outcome.DUPLICATE.value] - duplicates_before
        tick("with duplicates mixed in")
    finally:
        stop.set()
        await task
        started.extend(bridge.workflow_ids)

    report.measure("raw start_workflow", "starts/s").values.append(raw)
    report.measure("through the bridge", "starts/s").values.append(through_bridge)
    report.ratio("bridge / raw starts/s", target=THROUGHPUT_TARGET).values.append(through_bridge / raw)
    report.measure(f"raw start call p50 at {rate:g}/s", "ms").values.append(percentile(raw_calls, 50))
    report.measure(f"raw start call p99 at {rate:g}/s", "ms").values.append(percentile(raw_calls, 99))
    report.measure(f"publish-to-start p50 at {rate:g}/s", "ms").values.append(percentile(steady, 50))
    report.measure(f"publish-to-start p99 at {rate:g}/s", "ms").values.append(percentile(steady, 99))
    report.ratio("publish-to-start p99 / raw call p99", target=LATENCY_TARGET, direction="at most").values.append(
        percentile(steady, 99) / max(percentile(raw_calls, 99), 1e-9)
    )
    share = f"{duplicates:.0%} duplicates"
    report.measure(f"publish-to-start p50, {share}", "ms").values.append(percentile(mixed, 50))
    report.measure(f"publish-to-start p99, {share}", "ms").values.append(percentile(mixed, 99))
    report.ratio(f"publish-to-start p99, {share} / raw call p99").values.append(
        percentile(mixed, 99) / max(percentile(raw_calls, 99), 1e-9)
    )
    report.measure("duplicates recognised by the bridge", "copies").values.append(recognised)
    report.measure("duplicates published", "copies").values.append(copies)
    report.measure("runs started twice", "runs").values.append(
        bridge.outcomes[Outcome.STARTED.value] - len(bridge.started_at)
    )
