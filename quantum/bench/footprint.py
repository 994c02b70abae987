"""``quantum bench footprint``: resident memory of each process, idle and under the saga suite's load.

The processes: the product's worker (the real workflows and worker assembly over no-op agents, as in the saga
suite), ``quantum bridge`` (its own process, starting the runs from events), the Temporal dev server and
nats-server; and, as the baseline, a worker of the SDK alone serving the raw workflow. Idle is each one's resident
memory once all are up and settled; under load is its peak (``VmHWM``) after N concurrent runs started through
the bridge (and N raw runs for the baseline). Each repetition starts the workers and the bridge afresh; the servers
run through all of them.

On a cluster of one's own (``--cluster``), the servers are not this machine's to measure, and a bridge of the
bench's would consume the deployment's own stream: the worker and the baseline worker are measured, the product's
runs started by the client directly.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

from events.envelope import new_event
from quantum.bench.raw import RAW_WORKFLOW
from quantum.bench.report import Progress, Report, quiet
from quantum.bench.saga import (
    PRODUCT_WORKFLOW,
    REQUEST,
    BenchError,
    Recorded,
    SagaWorkers,
    concurrent_runs,
    record_real_run,
    saga_workers,
)
from quantum.bench.stack import BenchStack, bench_process, bench_stack, memory_mb, on, python_module
from quantum.settings import Settings
from quantum.stack import free_port, process_env

WORKER_TARGET_MB = 250.0
SETTLE_SECONDS = 3.0


async def _runs_completed(bench: BenchStack, task_queue: str) -> int:
    query = f'WorkflowType="DevSecOpsPipelineWorkflow" AND TaskQueue="{task_queue}" AND ExecutionStatus="Completed"'
    return (await bench.client.count_workflows(query)).count


async def _through_the_bridge(bench: BenchStack, task_queue: str, runs: int, progress: Progress) -> None:
    """Publish ``runs`` pipeline requests and wait until that many runs have completed."""
    js = bench.nc.jetstream()
    for n in range(runs):
        event = new_event("quantum.pipeline.requested", {**REQUEST, "project": f"bench-{n}"}, source="quantum-bench")
        await js.publish(event.nats_subject, event.to_bytes(), headers={"Nats-Msg-Id": event.id})
    deadline = time.monotonic() + 600
    while (done := await _runs_completed(bench, task_queue)) < runs:
        progress("runs through the bridge", done, runs)
        if time.monotonic() > deadline:
            raise BenchError(f"{done} of {runs} runs started through the bridge completed within 600 s")
        await asyncio.sleep(0.5)
    progress("runs through the bridge", runs, runs)


async def _bridge(bench: BenchStack, workers: SagaWorkers, exits: AsyncExitStack) -> int:
    """``quantum bridge`` as a process of its own, starting runs on the product worker's queue; its pid."""
    env = process_env(
        bench.settings,
        temporal_address=bench.temporal_address,
        nats_url=bench.nats_url,
        metrics_port=free_port(),
        QUANTUM_TASK_QUEUE=workers.product_queue,
        QUANTUM_DATA_DIR=str(bench.data / "bridge"),
    )
    command = python_module("quantum", "bridge")
    bridge = await exits.enter_async_context(
        bench_process("quantum bridge", command, bench.data / "bench-logs", ready_line="bridge consuming", env=env)
    )
    if bridge.pid is None:
        raise BenchError("quantum bridge exited as it started")
    return bridge.pid


def _labelled(progress: Progress, repetition: int) -> Progress:
    return lambda what, done, total: progress(f"{repetition}: {what}", done, total)


async def _repetition(
    bench: BenchStack,
    recorded: Recorded,
    workers: SagaWorkers,
    exits: AsyncExitStack,
    report: Report,
    *,
    runs: int,
    progress: Progress,
) -> None:
    """Fresh workers (and bridge) settled, then loaded: each one's resident memory idle and at its peak."""
    processes = {"worker": workers.product_pid}
    if not bench.on_cluster:
        processes["bridge"] = await _bridge(bench, workers, exits)
    processes |= {**bench.pids, "baseline worker (SDK only)": workers.raw_pid}
    await asyncio.sleep(SETTLE_SECONDS)
    for name, pid in processes.items():
        report.measure(f"{name}, idle", "MB").values.append(memory_mb(pid)[0])
    if bench.on_cluster:
        queue = workers.product_queue
        await concurrent_runs(
            bench.client, PRODUCT_WORKFLOW, REQUEST, runs=runs, task_queue=queue, tick=progress, what="runs"
        )
    else:
        await _through_the_bridge(bench, workers.product_queue, runs, progress)
    await concurrent_runs(
        bench.baseline_client,
        RAW_WORKFLOW,
        recorded.calls,
        runs=runs,
        task_queue=workers.raw_queue,
        tick=progress,
        what="baseline runs",
    )
    for name, pid in processes.items():
        report.measure(f"{name}, peak under load", "MB").values.append(memory_mb(pid)[1])
    worker_peak = memory_mb(workers.product_pid)[1]
    report.ratio("worker peak", target=WORKER_TARGET_MB, direction="at most", unit="MB").values.append(worker_peak)
    baseline_peak = memory_mb(workers.raw_pid)[1]
    report.ratio("worker peak / baseline worker peak").values.append(worker_peak / max(baseline_peak, 1e-9))


async def bench_footprint(
    *, runs: int = 100, repetitions: int = 3, progress: Progress = quiet, cluster: Settings | None = None
) -> Report:
    """The footprint benchmark on a fresh embedded stack of its own, or on the ``cluster`` those settings name; each
    repetition with worker (and bridge) processes of its own."""
    report = Report("footprint", {"runs": runs, "repetitions": repetitions, "on": on(cluster)})
    async with bench_stack(cluster) as bench:
        progress("recording one real run", 0, 1)
        recorded = await record_real_run(bench)
        progress("recording one real run", 1, 1)
        for repetition in range(1, repetitions + 1):
            async with AsyncExitStack() as exits:
                workers = await exits.enter_async_context(saga_workers(bench, recorded))
                tick = _labelled(progress, repetition)
                await _repetition(bench, recorded, workers, exits, report, runs=runs, progress=tick)
    started = "started by the client" if bench.on_cluster else "started by events through the bridge"
    report.notes.append(
        f"load: {runs} concurrent DevSecOpsPipelineWorkflow runs {started}, over no-op agents; the baseline worker "
        "ran as many raw runs"
    )
    if bench.pids:
        report.notes.append("the servers run through every repetition: their peak is their highest since they started")
    if bench.on_cluster:
        report.notes.append(
            "on a cluster, the bridge and the servers are not measured: the servers are not this machine's, and a "
            "bridge of the bench's would consume the deployment's stream (the embedded stack measures both)"
        )
    return report
