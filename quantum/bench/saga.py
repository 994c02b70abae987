"""``quantum bench saga``: what the saga costs on top of Temporal running the same agent activities.

1. One real run of ``DevSecOpsPipelineWorkflow`` (offline provider, sandbox, scanners, a local deployment; a ``dev``
   request without infrastructure, so no gate opens) records what each activity returned.
2. Two worker processes start beside the benchmark: the product's (the real workflows and worker assembly, every
   agent activity and the event publisher a no-op under its real name returning the recorded result) and the
   baseline's (:mod:`quantum.bench.raw`: the same activities, in the order the real run scheduled them, in a workflow
   with no saga logic and no events, importing nothing of the product).
3. Each repetition runs N concurrent runs of each, the baseline first in odd repetitions and last in even ones:
   runs/s, p50/p99 of each run's time from its start call to its result, and the ratio product/baseline.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from quantum.bench.raw import RAW_WORKFLOW
from quantum.bench.report import Progress, Report, percentile, quiet
from quantum.bench.stack import BenchStack, bench_process, bench_stack, cpu_seconds, memory_mb, on, python_module
from quantum.settings import Settings
from quantum.worker import activity_name, build_agents, new_worker
from workflows.models import RunStatusView
from workflows.outbox import EVENTS_HEADER

PRODUCT_WORKFLOW = "DevSecOpsPipelineWorkflow"
REQUEST: dict[str, Any] = {
    "project": "bench",
    "prompt": "An HTTP JSON service with a health endpoint and an in-memory store of JSON items",
    "requested_by": "bench",
    "environment": "dev",
}
SAGA_TARGET = 0.8
"""The product at no less than 80 % of the baseline's runs/s."""


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to."""


class _Recorder(Interceptor):
    """Keeps the first input and the first result of each activity type, as JSON."""

    def __init__(self) -> None:
        self.inputs: dict[str, Any] = {}
        self.results: dict[str, Any] = {}

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:  # noqa: A002
        return _Recording(next, self)


class _Recording(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, recorder: _Recorder) -> None:  # noqa: A002
        super().__init__(next)
        self.recorder = recorder

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:  # noqa: A002
        name = activity.info().activity_type
        self.recorder.inputs.setdefault(name, to_jsonable_python(input.args[0]) if input.args else None)
        result = await super().execute_activity(input)
        self.recorder.results.setdefault(name, to_jsonable_python(result))
        return result


@dataclass
class Recorded:
    """What the real run returned, every real activity name, and the agent activities it scheduled in order."""

    results: dict[str, Any]
    names: list[str]
    scheduled: list[str]
    seconds: float
    inputs: dict[str, Any] = field(default_factory=dict)
    """The input each agent activity was first called with."""

    @property
    def calls(self) -> list[tuple[str, Any]]:
        """The raw workflow's argument: each scheduled agent activity with the input the real run gave it."""
        return [(name, self.inputs.get(name)) for name in self.scheduled]

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps({"results": self.results, "names": self.names}))
        return path


@dataclass
class RunShape:
    """What one run asked of the server."""

    scheduled: list[str]
    """The activity types it scheduled, in order."""
    local_activities: int
    workflow_tasks: int
    events: int
    carried: int = 0
    """Outbound events carried by the activities it scheduled (``workflows.outbox``)."""
    input_bytes: int = 0
    """The size of the inputs of the activities it scheduled."""


async def run_shape(client: Client, workflow_id: str) -> RunShape:
    """Read a run's history for what it asked of the server."""
    shape = RunShape([], 0, 0, 0)
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        shape.events += 1
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            shape.scheduled.append(attributes.activity_type.name)
            shape.input_bytes += attributes.input.ByteSize()
            if EVENTS_HEADER in attributes.header.fields:
                payload = attributes.header.fields[EVENTS_HEADER]
                if client.data_converter.payload_codec is not None:  # a cluster's payload keys
                    (payload,) = await client.data_converter.payload_codec.decode([payload])
                shape.carried += len(json.loads(payload.data))
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            shape.workflow_tasks += 1
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            shape.local_activities += event.marker_recorded_event_attributes.marker_name == "core_local_activity"
    return shape


async def record_real_run(bench: BenchStack) -> Recorded:
    """Run one real dev pipeline on the real agents and keep what each activity returned."""
    agents = build_agents(bench.settings, nats_url=bench.nats_url)
    recorder = _Recorder()
    queue = f"bench-record-{uuid.uuid4()}"
    workflow_id = f"bench-record-{uuid.uuid4()}"
    began = time.perf_counter()
    try:
        async with new_worker(bench.client, agents.activities(), task_queue=queue, interceptors=[recorder]):
            handle = await bench.client.start_workflow(PRODUCT_WORKFLOW, REQUEST, id=workflow_id, task_queue=queue)
            try:
                await handle.result()
            except Exception as err:
                raise BenchError(f"the recorded real run did not succeed: {err}") from err
            view = await handle.query("status", result_type=RunStatusView)
    finally:
        await agents.close()
    if view.gates:
        raise BenchError(f"the recorded run opened gates {sorted(view.gates)}; the saga benchmark runs without gates")
    scheduled = (await run_shape(bench.client, workflow_id)).scheduled
    results = dict(recorder.results)
    if "events.publish" not in results and results.get("events.publish_all"):
        # events that rode on activities were published by the worker, not as activities: their result is the same
        results["events.publish"] = results["events.publish_all"][0]
    return Recorded(
        results=results,
        names=[activity_name(fn) for fn in agents.activities()],
        scheduled=[name for name in scheduled if not name.startswith("events.publish")],
        seconds=time.perf_counter() - began,
        inputs=dict(recorder.inputs),
    )


async def concurrent_runs(
    client: Client, workflow: str, arg: Any, *, runs: int, task_queue: str, tick: Progress, what: str
) -> tuple[float, list[float], list[str]]:
    """Start ``runs`` runs at once and wait for each: runs/s, each run's seconds from start call to result, ids."""
    done = 0
    ids = [f"bench-{uuid.uuid4()}" for _ in range(runs)]

    async def one(workflow_id: str) -> float:
        nonlocal done
        began = time.perf_counter()
        await client.execute_workflow(workflow, arg, id=workflow_id, task_queue=task_queue)
        done += 1
        tick(what, done, runs)
        return time.perf_counter() - began

    began = time.perf_counter()
    latencies = await asyncio.gather(*(one(i) for i in ids))
    return runs / (time.perf_counter() - began), list(latencies), ids


@dataclass
class SagaWorkers:
    """The two bench worker processes and their task queues."""

    product_queue: str
    raw_queue: str
    product_pid: int
    raw_pid: int
    product_log: Path


async def bench_saga(
    *, runs: int = 100, repetitions: int = 3, progress: Progress = quiet, cluster: Settings | None = None
) -> Report:
    """The saga benchmark on a fresh embedded stack of its own, or on the ``cluster`` those settings name."""
    report = Report(
        "saga",
        {"runs": runs, "repetitions": repetitions, "workflow": PRODUCT_WORKFLOW, "on": on(cluster)},
    )
    async with bench_stack(cluster) as bench:
        progress("recording one real run", 0, 1)
        recorded = await record_real_run(bench)
        progress("recording one real run", 1, 1)
        report.notes.append(
            f"the recorded real run took {recorded.seconds:.1f} s and scheduled {len(recorded.scheduled)} agent "
            f"activities: {', '.join(recorded.scheduled)}"
        )
        async with saga_workers(bench, recorded) as workers:
            await measure_saga(bench, recorded, workers, report, runs=runs, repetitions=repetitions, progress=progress)
    return report


@asynccontextmanager
async def saga_workers(bench: BenchStack, recorded: Recorded) -> AsyncIterator[SagaWorkers]:
    """The product's and the baseline's bench workers, as processes of their own; both stopped on exit."""
    logs = bench.data / "bench-logs"
    results = recorded.write(bench.data / "recorded-results.json")
    product_queue, raw_queue = f"bench-saga-{uuid.uuid4()}", f"bench-raw-{uuid.uuid4()}"
    common = ["--temporal", bench.temporal_address, "--namespace", bench.settings.temporal_namespace]
    if bench.on_cluster:
        common.append("--settings-stdin")
    product_argv = python_module(
        "quantum.bench.agents", *common, "--task-queue", product_queue, "--results", str(results)
    )
    raw_argv = python_module(
        "quantum.bench.raw",
        *common,
        "--task-queue",
        raw_queue,
        "--activities",
        ",".join(recorded.names),
        "--results",
        str(results),
    )
    async with AsyncExitStack() as exits:
        given = bench.worker_settings
        product = await exits.enter_async_context(
            bench_process("bench product worker", product_argv, logs, stdin=given)
        )
        raw = await exits.enter_async_context(bench_process("bench raw worker", raw_argv, logs, stdin=given))
        if product.pid is None or raw.pid is None:
            raise BenchError("a bench worker exited as it started")
        yield SagaWorkers(product_queue, raw_queue, product.pid, raw.pid, product.log_file)


async def measure_saga(
    bench: BenchStack,
    recorded: Recorded,
    workers: SagaWorkers,
    report: Report,
    *,
    runs: int,
    repetitions: int,
    progress: Progress,
) -> None:
    """Run the repetitions and fill ``report``."""
    client = bench.client
    clients = {"product": client, "baseline": bench.baseline_client}  # the baseline encrypts no payloads
    raw_rate, product_rate = report.measure("baseline runs/s", "runs/s"), report.measure("product runs/s", "runs/s")
    ratio = report.ratio("product / baseline runs/s", target=SAGA_TARGET)
    raw_p50, raw_p99 = report.measure("baseline p50", "ms"), report.measure("baseline p99", "ms")
    product_p50, product_p99 = report.measure("product p50", "ms"), report.measure("product p99", "ms")
    product_ids: list[str] = []
    raw_ids: list[str] = []
    server = bench.pids.get("temporal dev server")  # a cluster's servers are not this machine's to measure
    measured_by = (("worker", "worker"), ("server", "Temporal server")) if server else (("worker", "worker"),)
    cpu = {
        (side, who): report.measure(f"{side}: {label} CPU per run", "ms")
        for side in ("baseline", "product")
        for who, label in measured_by
    }
    sides = {
        "baseline": (RAW_WORKFLOW, recorded.calls, workers.raw_queue),
        "product": (PRODUCT_WORKFLOW, REQUEST, workers.product_queue),
    }
    for repetition in range(1, repetitions + 1):
        measured: dict[str, tuple[float, list[float]]] = {}
        for side in ("baseline", "product") if repetition % 2 else ("product", "baseline"):
            workflow, arg, queue = sides[side]
            worker = workers.product_pid if side == "product" else workers.raw_pid
            worker_cpu, server_cpu = cpu_seconds(worker), cpu_seconds(server) if server else 0.0
            rate, latencies, ids = await concurrent_runs(
                clients[side], workflow, arg, runs=runs, task_queue=queue, tick=progress, what=f"{repetition}: {side}"
            )
            cpu[side, "worker"].values.append((cpu_seconds(worker) - worker_cpu) * 1000 / runs)
            if server:
                cpu[side, "server"].values.append((cpu_seconds(server) - server_cpu) * 1000 / runs)
            measured[side] = rate, latencies
            (product_ids if side == "product" else raw_ids).extend(ids)
        raw, made = measured["baseline"], measured["product"]
        raw_rate.values.append(raw[0])
        product_rate.values.append(made[0])
        ratio.values.append(made[0] / raw[0])
        raw_p50.values.append(percentile(raw[1], 50) * 1000)
        raw_p99.values.append(percentile(raw[1], 99) * 1000)
        product_p50.values.append(percentile(made[1], 50) * 1000)
        product_p99.values.append(percentile(made[1], 99) * 1000)
    unpublished = workers.product_log.read_text(errors="replace").count("was not published")
    if unpublished:
        raise BenchError(f"the product worker could not publish {unpublished} events: it measured failing runs")
    product_shape, raw_shape = (
        await run_shape(client, product_ids[0]),
        await run_shape(bench.baseline_client, raw_ids[0]),
    )
    report.notes.append(
        f"per run: the baseline schedules {len(raw_shape.scheduled)} activities in {raw_shape.workflow_tasks} "
        f"workflow tasks ({raw_shape.events} history events, {raw_shape.input_bytes:,} bytes of activity input); "
        f"the product schedules {len(product_shape.scheduled)} in {product_shape.workflow_tasks} workflow tasks "
        f"({product_shape.events} history events, {product_shape.input_bytes:,} bytes of activity input); "
        f"{product_shape.carried} of its events ride on those activities, the rest go out through "
        f"{product_shape.local_activities} local activit{'y' if product_shape.local_activities == 1 else 'ies'}"
    )
    product_peak, raw_peak = memory_mb(workers.product_pid)[1], memory_mb(workers.raw_pid)[1]
    report.measure("product worker peak resident", "MB").values.append(product_peak)
    report.measure("baseline worker peak resident", "MB").values.append(raw_peak)
