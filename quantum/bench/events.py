"""``quantum bench events``: the bridge against raw ``start_workflow`` calls, on the same servers, in the same run.

Each repetition measures, with no worker polling (the starts are what is measured):

1. throughput: N raw starts at the bridge's batch concurrency, then N events through the bridge (starts/s);
2. latency at a steady rate: each raw ``start_workflow`` call's own time, then each event's time from its publish to
   its run's start through the bridge, at the same rate for the same time (p50/p99);
3. the same through the bridge with a share of duplicates mixed in: each one a second copy of an event, stored by
   JetStream (published without the de-duplication header, as a redelivery or a careless client would) so that the
   bridge itself must recognise the run as already started.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from events.bridge import Bridge, Outcome
from events.envelope import CloudEvent, new_event
from quantum.bench.report import Progress, Report, percentile, quiet
from quantum.bench.stack import BenchStack, bench_stack

REQUEST = {"project": "bench", "prompt": "a slugify helper", "requested_by": "bench"}
THROUGHPUT_TARGET = 0.9
"""The bridge at no less than 90 % of raw start_workflow throughput."""
COPY_HEADER = "Bench-Copy-Of"
LATENCY_TARGET = 2.0
"""Publish-to-start p99 no more than twice the raw start call's own p99 at the same rate."""


class _TimedBridge(Bridge):
    """The real bridge, noting when each event's run was started and what became of each message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started_at: dict[str, float] = {}
        self.outcomes: Counter[str] = Counter()

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


async def _publish(js: JetStreamContext, event: CloudEvent, *, deduplicated: bool = True) -> None:
    headers = {"Nats-Msg-Id": event.id} if deduplicated else {COPY_HEADER: event.id}
    await js.publish(event.nats_subject, event.to_bytes(), headers=headers)


async def _raw_start(client: Client, task_queue: str) -> None:
    await client.start_workflow(
        "CodeGenerationWorkflow",
        REQUEST,
        id=f"bench-raw-{uuid.uuid4()}",
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )


async def _raw_burst(client: Client, count: int, task_queue: str, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def start() -> None:
        async with gate:
            await _raw_start(client, task_queue)

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
) -> Report:
    """Run the events benchmark on a fresh embedded stack of its own (temporary data, free ports)."""
    report = Report(
        "events",
        {
            "events": events,
            "rate": rate,
            "seconds": seconds,
            "batch": batch,
            "duplicates": duplicates,
            "repetitions": repetitions,
        },
    )
    async with bench_stack(bridge_batch=batch) as bench:
        await _raw_burst(bench.client, min(events, 100), f"bench-warm-up-{uuid.uuid4()}", concurrency=batch)
        for repetition in range(1, repetitions + 1):
            await _repetition(bench, report, repetition, events, rate, seconds, duplicates, progress)
    report.notes.append(
        f"SQLite store; the bridge holds up to {batch} events at a time; no worker polls the runs; a burst of raw "
        "starts warms the server up first"
    )
    return report


async def _repetition(
    bench: BenchStack,
    report: Report,
    repetition: int,
    events: int,
    rate: float,
    seconds: float,
    duplicates: float,
    progress: Progress,
) -> None:
    js = bench.nc.jetstream()
    task_queue = f"bench-{uuid.uuid4()}"
    steps, step = 5, 0

    def tick(what: str) -> None:
        nonlocal step
        step += 1
        progress(f"{repetition}: {what}", step, steps)

    raw = await _raw_burst(bench.client, events, task_queue, concurrency=bench.settings.bridge_batch)
    tick("raw starts")
    config = bench.settings.bridge_config()
    bridge = _TimedBridge(bench.nc, bench.client, type(config)(**{**config.__dict__, "task_queue": task_queue}))
    await bridge.ensure_consumer()
    backlog = [_event() for _ in range(events)]
    for event in backlog:
        await _publish(js, event)
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
            await _raw_start(bench.client, task_queue)
            raw_calls.append((time.perf_counter() - called) * 1000)

        await _steady(rate, seconds, raw_call)
        tick("raw start calls at a steady rate")

        published_at: dict[str, float] = {}

        async def publish(_n: int) -> None:
            event = _event()
            published_at[event.id] = time.perf_counter()
            await _publish(js, event)

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
            await _publish(js, event)
            if chooser.random() < duplicates:
                copies += 1
                await _publish(js, event, deduplicated=False)

        await _steady(rate, seconds, publish_mixed)
        await _wait_started(bridge, set(mixed_at), timeout=120)
        await _wait_handled(bridge, handled_before + len(mixed_at) + copies, timeout=120)
        mixed = [(bridge.started_at[i] - t) * 1000 for i, t in mixed_at.items()]
        recognised = bridge.outcomes[Outcome.DUPLICATE.value] - duplicates_before
        tick("with duplicates mixed in")
    finally:
        stop.set()
        await task

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
    report.measure("duplicates recognised by the bridge", "copies").values.append(recognised)
    report.measure("duplicates published", "copies").values.append(copies)
    report.measure("runs started twice", "runs").values.append(
        bridge.outcomes[Outcome.STARTED.value] - len(bridge.started_at)
    )
