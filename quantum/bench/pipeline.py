"""``quantum bench pipeline``: real runs on the offline provider, with every real agent.

Each run generates code, generates its tests and runs them in the sandbox with coverage and mutants, scans, plans
and provisions a local directory, deploys a release on loopback, verifies it and sets up its monitoring. The suite
reports each run's wall time and each stage's (from the run's history: an activity's scheduling to its completion),
the median over single runs one after another, then the time per run at each concurrency (in each repetition, the
median of that many runs at once): the single run is the baseline, and the highest concurrency at which the median
time per run is less than double is what one worker carries.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
import uuid
from collections import defaultdict
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from quantum.bench.report import Progress, Report, quiet
from quantum.bench.saga import PRODUCT_WORKFLOW, REQUEST, BenchError
from quantum.bench.stack import bench_stack, on
from quantum.settings import Settings
from quantum.worker import build_agents, new_worker

SINGLE_RUN_TARGET_SECONDS = 10.0
DOUBLED = 2.0


def request(n: int) -> dict[str, Any]:
    """Run ``n``'s request: a project of its own (its release, infrastructure and findings apart from the others')."""
    return {
        **REQUEST,
        "project": f"bench-{n}",
        "infrastructure": [{"kind": "directory", "name": "data"}],
    }


async def stage_seconds(client: Client, workflow_id: str) -> dict[str, float]:
    """Each activity's seconds from its scheduling to its completion in a run's history, by activity type."""
    scheduled: dict[int, tuple[str, float]] = {}
    seconds: dict[str, float] = defaultdict(float)
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        at = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = (event.activity_task_scheduled_event_attributes.activity_type.name, at)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            name, began = scheduled[event.activity_task_completed_event_attributes.scheduled_event_id]
            seconds[name] += at - began
    return dict(seconds)


async def bench_pipeline(
    *,
    runs: int = 3,
    concurrency: list[int] | None = None,
    repetitions: int = 2,
    progress: Progress = quiet,
    cluster: Settings | None = None,
) -> Report:
    """The pipeline benchmark on a fresh embedded stack of its own (or the ``cluster`` those settings name), the
    worker in this process."""
    levels = sorted(set(concurrency or [1, 2, 4, 8]) | {1})
    parameters = {"runs": runs, "concurrency": levels, "repetitions": repetitions, "provider": "offline"}
    report = Report("pipeline", {**parameters, "on": on(cluster)})
    async with bench_stack(cluster) as bench:
        agents = build_agents(bench.settings, nats_url=bench.nats_url)
        queue = f"bench-pipeline-{uuid.uuid4()}"
        counter = itertools.count(1)
        try:
            async with new_worker(bench.client, agents.activities(), task_queue=queue):

                async def one() -> tuple[float, str]:
                    workflow_id = f"bench-pipeline-{uuid.uuid4()}"
                    began = time.perf_counter()
                    handle = await bench.client.start_workflow(
                        PRODUCT_WORKFLOW, request(next(counter)), id=workflow_id, task_queue=queue
                    )
                    try:
                        await handle.result()
                    except Exception as err:
                        raise BenchError(f"run {workflow_id} did not succeed: {err}") from err
                    return time.perf_counter() - began, workflow_id

                await one()  # warm-up: first imports, the pattern store, the sandbox's first start
                single = report.measure("run, one at a time", "s")
                stages: dict[str, list[float]] = defaultdict(list)
                for n in range(runs):
                    seconds, workflow_id = await one()
                    single.values.append(seconds)
                    for name, spent in (await stage_seconds(bench.client, workflow_id)).items():
                        stages[name].append(spent)
                    progress("single runs", n + 1, runs)
                for name, values in sorted(stages.items(), key=lambda item: -statistics.median(item[1])):
                    report.measure(f"  {name}", "s").values.extend(values)
                report.ratio(
                    "single run median", target=SINGLE_RUN_TARGET_SECONDS, direction="at most", unit="s"
                ).values.append(single.median)

                for repetition in range(1, repetitions + 1):
                    for level in levels:
                        times = [t for t, _ in await asyncio.gather(*(one() for _ in range(level)))]
                        per_run = statistics.median(times)
                        report.measure(f"time per run, {level} concurrent", "s").values.append(per_run)
                        ratio = per_run / single.median
                        report.ratio(f"time per run, {level} concurrent / one at a time").values.append(ratio)
                        progress(f"{repetition}: concurrency levels", levels.index(level) + 1, len(levels))
                ratios = {level: report.ratios[f"time per run, {level} concurrent / one at a time"] for level in levels}
                carried = max((level for level, ratio in ratios.items() if ratio.median < DOUBLED), default=1)
                report.measure("concurrent runs before the time per run doubles", "runs").values.append(carried)
                if carried == levels[-1]:
                    report.notes.append(f"the time per run did not double at any concurrency tried (up to {carried})")
        finally:
            await agents.close()
    report.notes.append(
        "the worker runs in this process with every real agent; the stack's start-up and one warm-up run are not "
        "counted; stage times run from an activity's scheduling to its completion"
    )
    return report
