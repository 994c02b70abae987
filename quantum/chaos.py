"""Chaos: real pipeline runs while their workers are killed with SIGKILL at random moments, and what is left after.

:func:`bench_chaos` starts a fresh embedded stack of its own (a temporary data directory, free ports), ``workers``
``quantum worker`` children (two by default) and ``runs`` real pipelines (code, tests in the sandbox, the scan, a
JetStream stream and a directory, a deployed release, monitoring), started a few seconds apart so that a kill finds
them in different stages. ``kills`` times, after a pause drawn from the seed, it kills with SIGKILL the worker
running the most activities (a worker picked with the seed when none runs one) and starts it again at once. It
waits for every run to end, then counts side effects by their idempotency key:

* outbound events on ``QUANTUM_EVENTS`` by event id (the ``Nats-Msg-Id``): more than one message with an id is a
  duplicate; an announcement a run made and that is not on the bus (its start, each stage that succeeded, how it
  ended) is a loss;
* release hosts (``agents.release_server`` processes) by run: more than one is a duplicate, none for a run that
  succeeded is a loss;
* what a run that succeeded keeps, by run: its JetStream stream, its directory, its release record and its
  monitoring files (scrape target, alert rules, dashboard); one missing is a loss, and one still there after a run
  was compensated is a leftover;
* processes left behind once the workers and the stack have stopped: any process whose command line or working
  directory is in the bench's data directory (each is then killed).

Failover: for each activity running on a killed worker, the seconds from the SIGKILL to the start of its next
attempt on a live worker, as Temporal records it: the pending activity's ``last_started_time`` (polled with
DescribeWorkflowExecution), or the history's ActivityTaskStarted event when that attempt ended between two polls.
Temporal notices a dead worker only when its activity misses the heartbeat timeout (``workflows.presets.HEARTBEAT``
after the last heartbeat the server recorded; the SDK sends one at most every 80 % of it), then retries it after 1 s:
so the figure is a little over the timeout at most, less when the last heartbeat was recorded well before the kill,
and says how long a run stalls when its worker dies, not how fast a death is detected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from agents.infra import project_dir, stream_name
from agents.workspace import run_dir_name
from events.streams import EVENTS_STREAM, ensure_streams
from quantum.app import connect_nats
from quantum.client import connect
from quantum.settings import Settings
from quantum.stack import EmbeddedStack, free_port, loopback_settings, port_in_use, process_env
from quantum.stack.process import ServerProcess
from quantum.stack.proctable import ProcessEntry, processes
from workflows.models import RunStatusView
from workflows.presets import HEARTBEAT

PROMPT = "an HTTP JSON service with a health endpoint"
INFRA = [{"kind": "directory", "name": "assets"}, {"kind": "stream", "name": "audit"}]
"""What each run provisions: a directory and a JetStream stream of its own."""
WORKFLOW = "DevSecOpsPipelineWorkflow"
POLL_SECONDS = 0.5
SETTLE_SECONDS = 20.0
"""At a kill's moment, how long to wait for an activity to be running when none is."""
WORKER_READY_SECONDS = 90.0
WORKER_DRAIN_SECONDS = 10
ORPHAN_GRACE_SECONDS = 20.0
"""How long the children of stopped workers get to exit before those left are counted (and killed)."""
MAX_DETAILS = 50


@dataclass(frozen=True)
class ChaosConfig:
    """What to run: ``runs`` pipelines, ``kills`` SIGKILLs of a worker among ``workers``, moments drawn from ``seed``.

    ``stagger`` is the seconds between two runs' starts (runs in step would all be in the same stage at a kill);
    ``pause`` bounds the pause before each kill (seconds, uniform); ``timeout`` is how long the runs get to end
    after the last kill.
    """

    runs: int = 6
    kills: int = 3
    seed: int = 0
    workers: int = 2
    stagger: float = 3.0
    pause: tuple[float, float] = (2.0, 10.0)
    timeout: float = 900.0


@dataclass(frozen=True)
class ChaosProgress:
    """Where a bench is, for a progress bar."""

    phase: str
    runs: int
    ended: int
    kills: int
    kills_asked: int


@dataclass
class Kill:
    """One SIGKILL: when (seconds after the runs were started), which worker, and the activities it was running."""

    at: float
    worker: str
    activities: list[str]


@dataclass
class Failover:
    """An activity of a killed worker: seconds from the SIGKILL to its next attempt's start (None: not seen)."""

    run_id: str
    activity: str
    attempt: int
    seconds: float | None
    picked_up_by: str
    source: str


@dataclass
class RunOutcome:
    """How a run ended: ``succeeded``, ``compensated`` (failed, every compensation completed) or ``other``."""

    run_id: str
    project: str
    ending: str
    status: str
    error: str | None = None


@dataclass
class SideEffects:
    """Side effects counted by idempotency key: duplicates, losses and leftovers by kind, with what each was."""

    events: int = 0
    duplicates: Counter[str] = field(default_factory=Counter)
    losses: Counter[str] = field(default_factory=Counter)
    leftovers: Counter[str] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)

    def note(self, figures: Counter[str], kind: str, detail: str, count: int = 1) -> None:
        figures[kind] += count
        if len(self.details) < MAX_DETAILS:
            self.details.append(detail)


@dataclass
class ChaosReport:
    """The figures of one bench."""

    config: ChaosConfig
    outcomes: list[RunOutcome]
    kills: list[Kill]
    failovers: list[Failover]
    effects: SideEffects
    orphans: list[str]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def endings(self) -> Counter[str]:
        return Counter(o.ending for o in self.outcomes)

    @property
    def failover_seconds(self) -> list[float]:
        return [f.seconds for f in self.failovers if f.seconds is not None]

    @property
    def ok(self) -> bool:
        """No duplicate, no loss, nothing left behind, and every run succeeded or was compensated."""
        effects = self.effects
        clean = not (effects.duplicates.total() or effects.losses.total() or effects.leftovers.total())
        return clean and not self.orphans and self.endings["other"] == 0

    def rows(self) -> list[tuple[str, str]]:
        """(figure, value) for a table."""
        endings, effects, config = self.endings, self.effects, self.config
        return [
            ("seed", str(config.seed)),
            ("runs", str(config.runs)),
            ("kills (SIGKILL of a worker)", f"{len(self.kills)} of {config.kills}, among {config.workers} workers"),
            ("succeeded", str(endings["succeeded"])),
            ("compensated", str(endings["compensated"])),
            ("other endings", _other_endings(self.outcomes)),
            ("outbound events (distinct ids)", str(effects.events)),
            ("duplicates", _by_kind(effects.duplicates)),
            ("losses", _by_kind(effects.losses)),
            ("left after compensation", _by_kind(effects.leftovers)),
            ("processes left behind", str(len(self.orphans))),
            ("failover: SIGKILL to next attempt started", _describe_failovers(self.failovers, len(self.kills))),
            ("took", f"{self.seconds:.0f} s"),
        ]

    def as_json(self) -> dict[str, Any]:
        endings, effects = self.endings, self.effects
        seconds = self.failover_seconds
        return {
            "config": {**asdict(self.config), "pause": list(self.config.pause)},
            "runs": len(self.outcomes),
            "kills": len(self.kills),
            "endings": {
                "succeeded": endings["succeeded"],
                "compensated": endings["compensated"],
                "other": endings["other"],
            },
            "outcomes": [asdict(o) for o in self.outcomes],
            "events": effects.events,
            "duplicates": {"total": effects.duplicates.total(), **effects.duplicates},
            "losses": {"total": effects.losses.total(), **effects.losses},
            "leftovers": {"total": effects.leftovers.total(), **effects.leftovers},
            "details": effects.details,
            "orphans": self.orphans,
            "failover": {
                "measured": len(seconds),
                "not_seen": len(self.failovers) - len(seconds),
                "median_seconds": statistics.median(seconds) if seconds else None,
                "max_seconds": max(seconds) if seconds else None,
                "samples": [asdict(f) for f in self.failovers],
            },
            "kill_log": [asdict(k) for k in self.kills],
            "seconds": self.seconds,
            "ok": self.ok,
            "notes": self.notes,
        }


def _by_kind(figures: Counter[str]) -> str:
    total = figures.total()
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(figures.items()) if n)
    return f"{total} ({kinds})" if kinds else str(total)


def _other_endings(outcomes: list[RunOutcome]) -> str:
    others = Counter(o.status for o in outcomes if o.ending == "other")
    return f"{others.total()} ({', '.join(f'{s} {n}' for s, n in sorted(others.items()))})" if others else "0"


def _describe_failovers(failovers: list[Failover], kills: int) -> str:
    """``median 29.0 s, max 30.1 s over 3 activities (2 on another worker; 1 on a worker started since)``."""
    if not failovers:
        return "no activity was running on a killed worker" if kills else "no worker was killed"
    seconds = [f.seconds for f in failovers if f.seconds is not None]
    text = f"median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s over " if seconds else ""
    text += f"{len(seconds)} {'activity' if len(seconds) == 1 else 'activities'}"
    by = Counter(f.picked_up_by for f in failovers if f.seconds is not None)
    if by:
        text += " (" + "; ".join(f"{n} on {who}" for who, n in sorted(by.items())) + ")"
    unseen = len(failovers) - len(seconds)
    return text + (f"; {unseen} not seen starting again" if unseen else "")


# --- the workers ---------------------------------------------------------------------------------------------------


class WorkerProcess:
    """One ``quantum worker`` child: its own metrics port, a clean environment with the stack's settings only (the
    offline provider, no secrets), working in the data directory, dying with this process (SIGTERM: it drains)."""

    def __init__(self, name: str, settings: Settings, stack: EmbeddedStack) -> None:
        self.name = name
        self.metrics_port = free_port()
        data = settings.data_path
        env = process_env(
            settings,
            temporal_address=stack.temporal_address,
            nats_url=stack.nats_url,
            metrics_port=self.metrics_port,
            QUANTUM_WORKER_SHUTDOWN_SECONDS=str(WORKER_DRAIN_SECONDS),
        )
        argv = [sys.executable, "-m", "quantum", "worker"]
        self._process = ServerProcess(f"quantum worker {name}", argv, data / "logs" / f"{name}.log", env=env, cwd=data)

    @property
    def identity(self) -> str | None:
        """How Temporal knows it: ``<pid>@<host>``, the SDK's default identity."""
        pid = self._process.pid
        return f"{pid}@{socket.gethostname()}" if pid is not None else None

    def __str__(self) -> str:
        return f"{self.name} (pid {self._process.pid})"

    async def start(self) -> None:
        """Start it and wait until it serves its metrics (its releases restored, about to poll)."""
        await self._process.start(self._serving, WORKER_READY_SECONDS)

    async def _serving(self) -> bool:
        return await asyncio.to_thread(port_in_use, "127.0.0.1", self.metrics_port)

    async def kill(self) -> None:
        await self._process.kill()

    async def stop(self) -> None:
        await self._process.stop(timeout=WORKER_DRAIN_SECONDS + 20)


@dataclass(frozen=True)
class Running:
    """An activity attempt running on a worker, as DescribeWorkflowExecution shows it."""

    handle: WorkflowHandle[Any, Any]
    activity_id: str
    activity_type: str
    attempt: int
    worker: str

    def __str__(self) -> str:
        return f"{self.handle.id} {self.activity_type} attempt {self.attempt}"


async def running_activities(handles: Iterable[WorkflowHandle[Any, Any]]) -> list[Running]:
    """Every activity attempt running now (started, not finished) in ``handles``' runs."""
    found = []
    for handle in handles:
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                found.append(
                    Running(
                        handle,
                        pending.activity_id,
                        pending.activity_type.name,
                        pending.attempt,
                        pending.last_worker_identity,
                    )
                )
    return found


# --- the bench -----------------------------------------------------------------------------------------------------


class _Bench:
    """One bench on a started stack: the workers, the runs, the kills and the failovers being watched."""

    def __init__(
        self,
        config: ChaosConfig,
        settings: Settings,
        stack: EmbeddedStack,
        client: Client,
        on_progress: Callable[[ChaosProgress], None],
    ) -> None:
        self.config = config
        self.settings = settings
        self.client = client
        self.rng = random.Random(config.seed)
        self.workers = [WorkerProcess(f"worker-{n + 1}", settings, stack) for n in range(config.workers)]
        self.handles: list[WorkflowHandle[Any, Any]] = []
        self.starting: asyncio.Task[None] | None = None
        self.ended: set[str] = set()
        self.kills: list[Kill] = []
        self.watchers: list[tuple[Running, asyncio.Task[Failover]]] = []
        self.began = time.time()
        self._on_progress = on_progress
        self.phase = "starting the workers"

    def progress(self, phase: str | None = None) -> None:
        self.phase = phase or self.phase
        self._on_progress(
            ChaosProgress(self.phase, self.config.runs, len(self.ended), len(self.kills), self.config.kills)
        )

    async def start_runs(self) -> None:
        """Start the workers, then the runs, ``stagger`` seconds apart, in the background."""
        await asyncio.gather(*(w.start() for w in self.workers))
        self.began = time.time()
        self.starting = asyncio.create_task(self._start_runs())
        self.progress("runs in flight")

    async def _start_runs(self) -> None:
        for n in range(self.config.runs):
            if n:
                await asyncio.sleep(self.config.stagger)
            request = {"project": f"chaos{n}", "prompt": PROMPT, "requested_by": "chaos", "infrastructure": INFRA}
            handle = await self.client.start_workflow(
                WORKFLOW, request, id=f"pipeline-chaos-{n}", task_queue=self.settings.task_queue
            )
            self.handles.append(handle)

    async def kill_at_random_moments(self) -> None:
        """``kills`` times: a pause, then the SIGKILL of the busiest worker, which is started again at once."""
        for _ in range(self.config.kills):
            await self._sleep_watching(self.rng.uniform(*self.config.pause))
            if len(self.ended) == self.config.runs:
                return
            running = await self._some_running()
            victim = self._victim(running)
            on_victim = [r for r in running if r.worker == victim.identity]
            alive = {w.identity for w in self.workers if w is not victim}
            name, killed_at = str(victim), time.time()
            await victim.kill()
            self.kills.append(Kill(round(killed_at - self.began, 1), name, [str(r) for r in on_victim]))
            self.watchers += [(r, asyncio.create_task(self._failover(r, killed_at, alive))) for r in on_victim]
            self.progress()
            await victim.start()

    async def _sleep_watching(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 1.0))
            await self._note_ended()

    async def _some_running(self) -> list[Running]:
        """The activities running now on a live worker; when none is, wait up to :data:`SETTLE_SECONDS` for one.

        An attempt whose worker was killed earlier still shows as started until its heartbeat timeout: left out.
        """
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            live = {w.identity for w in self.workers}
            running = [
                r
                for r in await running_activities(h for h in self.handles if h.id not in self.ended)
                if r.worker in live
            ]
            if running or time.monotonic() > deadline:
                return running
            await asyncio.sleep(POLL_SECONDS)
            await self._note_ended()

    def _victim(self, running: list[Running]) -> WorkerProcess:
        load = Counter(r.worker for r in running)
        busy = [w for w in self.workers if load[w.identity or ""]]
        if not busy:
            return self.rng.choice(self.workers)
        return max(busy, key=lambda w: load[w.identity or ""])

    async def _failover(self, running: Running, killed_at: float, alive: set[str | None]) -> Failover:
        """Watch the killed attempt until its next one starts; the seconds from the SIGKILL to that start."""
        deadline = time.monotonic() + self.config.timeout
        while time.monotonic() < deadline:
            description = await running.handle.describe()
            pending = next(
                (p for p in description.raw_description.pending_activities if p.activity_id == running.activity_id),
                None,
            )
            if pending is None:  # it ended between two polls (or the run did): the history has its last attempt
                return await self._failover_from_history(running, killed_at, alive)
            if (
                pending.attempt > running.attempt
                and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            ):
                return self._restarted(running, killed_at, alive, pending)
            await asyncio.sleep(POLL_SECONDS)
        return Failover(running.handle.id, running.activity_type, running.attempt, None, "nobody", "")

    def _restarted(
        self, running: Running, killed_at: float, alive: set[str | None], pending: PendingActivityInfo
    ) -> Failover:
        started = pending.last_started_time.ToNanoseconds() / 1e9
        who = self._who(pending.last_worker_identity, alive)
        return Failover(running.handle.id, running.activity_type, running.attempt, started - killed_at, who, "describe")

    async def _failover_from_history(self, running: Running, killed_at: float, alive: set[str | None]) -> Failover:
        scheduled: int | None = None
        async for event in running.handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                if event.activity_task_scheduled_event_attributes.activity_id == running.activity_id:
                    scheduled = event.event_id
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = event.activity_task_started_event_attributes
                if started.scheduled_event_id == scheduled and started.attempt == running.attempt + 1:
                    at = event.event_time.ToNanoseconds() / 1e9
                    who = self._who(started.identity, alive)
                    return Failover(
                        running.handle.id, running.activity_type, running.attempt, at - killed_at, who, "history"
                    )
        return Failover(running.handle.id, running.activity_type, running.attempt, None, "nobody", "")

    def _who(self, identity: str, alive: set[str | None]) -> str:
        """Which worker ran the next attempt: one that was running at the kill, or one started since."""
        return "another worker" if identity in alive else "a worker started since"

    async def _note_ended(self) -> None:
        before = len(self.ended)
        for handle in self.handles:
            if handle.id not in self.ended and (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                self.ended.add(handle.id)
        if len(self.ended) != before:
            self.progress()

    async def wait_ended(self) -> None:
        if self.starting is not None:
            await self.starting
        deadline = time.monotonic() + self.config.timeout
        while len(self.ended) < len(self.handles) and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            await self._note_ended()

    async def failovers(self) -> list[Failover]:
        """The watched failovers; the runs have ended, so each watcher ends at its next poll. A watcher that failed
        (Temporal did not answer) counts as not seen, with the reason."""
        done = await asyncio.gather(*(task for _, task in self.watchers), return_exceptions=True)
        return [
            result
            if isinstance(result, Failover)
            else Failover(r.handle.id, r.activity_type, r.attempt, None, "nobody", f"not watched: {result}")
            for (r, _), result in zip(self.watchers, done, strict=True)
        ]

    async def outcomes(self) -> tuple[list[RunOutcome], dict[str, RunStatusView]]:
        outcomes, views = [], {}
        for n, handle in enumerate(self.handles):
            status = (await handle.describe()).status
            views[handle.id] = await _view(handle)
            outcomes.append(_outcome(handle.id, f"chaos{n}", status, views[handle.id]))
        return outcomes, views

    async def stop(self) -> None:
        tasks = [task for _, task in self.watchers] + ([self.starting] if self.starting else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)


async def _view(handle: WorkflowHandle[Any, Any]) -> RunStatusView:
    """The run's ``status`` view; when the query fails, an empty view that says why (the run then ends as other)."""
    try:
        view: RunStatusView = await handle.query("status", result_type=RunStatusView)
    except (RPCError, WorkflowQueryFailedError) as err:
        return RunStatusView(pipeline_id=handle.id, workflow=WORKFLOW, error=f"the status query failed: {err}")
    return view


def _outcome(run_id: str, project: str, status: WorkflowExecutionStatus | None, view: RunStatusView) -> RunOutcome:
    name = status.name.lower() if status is not None else "unknown"
    if status == WorkflowExecutionStatus.COMPLETED and view.status == "succeeded":
        ending = "succeeded"
    elif status == WorkflowExecutionStatus.FAILED and all(c.outcome == "completed" for c in view.compensations):
        ending = "compensated"
    else:
        ending = "other"
    return RunOutcome(run_id, project, ending, name, view.error)


# --- side effects --------------------------------------------------------------------------------------------------


async def outbound_events(js: JetStreamContext, run_ids: set[str]) -> list[dict[str, Any]]:
    """Every message on ``QUANTUM_EVENTS`` that announces something of ``run_ids``' runs, in order."""
    info = await js.stream_info(EVENTS_STREAM)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(EVENTS_STREAM, seq)
        except Exception:  # a gap (a message dropped by retention): nothing to count
            continue
        event = json.loads(msg.data or b"{}")
        data = event.get("data")
        if isinstance(data, dict) and data.get("pipeline_id") in run_ids:
            found.append(event)
    return found


def count_events(
    effects: SideEffects, events: list[dict[str, Any]], outcomes: list[RunOutcome], views: dict[str, RunStatusView]
) -> None:
    """Duplicates by event id; losses: a run's start, each stage it passed, and how it ended, each on the bus."""
    ids = Counter(str(e.get("id")) for e in events)
    effects.events = len(ids)
    for event_id, n in sorted(ids.items()):
        if n > 1:
            effects.note(effects.duplicates, "events", f"event {event_id} is on the bus {n} times", n - 1)
    seen = {(e["data"]["pipeline_id"], e.get("type"), e["data"].get("stage")) for e in events}
    for outcome in outcomes:
        for kind, stage in expected_events(outcome, views[outcome.run_id]):
            if (outcome.run_id, kind, stage) not in seen:
                effects.note(effects.losses, "events", f"{outcome.run_id}: {kind} {stage or ''} is not on the bus")


def expected_events(outcome: RunOutcome, view: RunStatusView) -> list[tuple[str, str | None]]:
    """What a run announced for sure: its start, each stage that succeeded, and its end (when it ended)."""
    expected: list[tuple[str, str | None]] = [("quantum.pipeline.started", None)]
    expected += [("quantum.stage.completed", s) for s, state in view.stages.items() if state == "succeeded"]
    if outcome.ending == "succeeded":
        expected.append(("quantum.pipeline.completed", None))
    elif outcome.ending == "compensated":
        expected.append(("quantum.pipeline.failed", None))
    return expected


def release_hosts(deployments: Path, run_ids: Iterable[str], table: list[ProcessEntry]) -> dict[str, int]:
    """How many release host processes serve each run now."""
    roots = {str(deployments / run_dir_name(r) / "release"): r for r in run_ids}
    hosts: Counter[str] = Counter()
    for process in table:
        root = process.option("--root")
        if root is not None and root in roots and "agents.release_server" in process.argv:
            hosts[roots[root]] += 1
    return {r: hosts[r] for r in roots.values()}


def kept_by_run(data: Path, outcome: RunOutcome, streams: set[str], view: RunStatusView) -> dict[str, bool]:
    """Whether each thing a run keeps once it succeeded is there now: for a succeeded run, all of it (its monitoring
    files unless monitoring failed, which is a warning); for another run, any of it (a compensation removes it)."""
    name = run_dir_name(outcome.run_id)
    monitoring = data / "monitoring"
    files = [f"prometheus/targets/{name}.json", f"prometheus/rules/{name}.yml", f"grafana/dashboards/{name}.json"]
    present = [(monitoring / f).is_file() for f in files]
    kept = {
        "streams": stream_name(outcome.project, "audit") in streams,
        "directories": (project_dir(data / "infra", outcome.project) / "assets").is_dir(),
        "release records": (data / "deployments" / name / "deployment.json").is_file(),
    }
    if outcome.ending != "succeeded":
        kept["monitoring files"] = any(present)
    elif view.outputs.get("monitoring") != "failed":
        kept["monitoring files"] = all(present)
    return kept


def count_kept(
    effects: SideEffects,
    data: Path,
    outcomes: list[RunOutcome],
    views: dict[str, RunStatusView],
    streams: set[str],
    hosts: dict[str, int],
) -> None:
    """Release hosts by run (one for a succeeded run, none for a compensated one) and what each run keeps."""
    for outcome in outcomes:
        n = hosts.get(outcome.run_id, 0)
        if n > 1:
            effects.note(effects.duplicates, "release hosts", f"{outcome.run_id}: {n} release hosts", n - 1)
        kept = kept_by_run(data, outcome, streams, views[outcome.run_id])
        if outcome.ending == "succeeded":
            if n == 0:
                effects.note(effects.losses, "release hosts", f"{outcome.run_id}: no release host serves it")
            for kind in (k for k, there in kept.items() if not there):
                effects.note(effects.losses, kind, f"{outcome.run_id}: its {kind} missing")
        elif outcome.ending == "compensated":
            if n:
                effects.note(
                    effects.leftovers, "release hosts", f"{outcome.run_id}: {n} release hosts after rollback", n
                )
            for kind in (k for k, there in kept.items() if there):
                effects.note(effects.leftovers, kind, f"{outcome.run_id}: its {kind} still there")


async def side_effects(
    js: JetStreamContext, data: Path, outcomes: list[RunOutcome], views: dict[str, RunStatusView]
) -> SideEffects:
    """Every figure of :class:`SideEffects`, counted while the workers (and so the release hosts) still run."""
    effects = SideEffects()
    run_ids = {o.run_id for o in outcomes}
    count_events(effects, await outbound_events(js, run_ids), outcomes, views)
    streams = {info.config.name for info in await js.streams_info() if info.config.name}
    hosts = release_hosts(data / "deployments", run_ids, await asyncio.to_thread(processes))
    count_kept(effects, data, outcomes, views, streams, hosts)
    return effects


async def left_behind(data: Path, grace: float = ORPHAN_GRACE_SECONDS) -> list[str]:
    """Processes still in ``data`` (command line or working directory) ``grace`` seconds after everything stopped;
    each is then killed, so that the bench leaves none."""
    deadline = time.monotonic() + grace
    while True:
        found = [p for p in await asyncio.to_thread(processes) if p.within(data)]
        if not found or time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    for process in found:
        if process.identity.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(process.identity.pid, signal.SIGKILL)
    return [f"pid {p.identity.pid}: {' '.join(p.argv)[:200]}" for p in found]


# --- the whole bench -----------------------------------------------------------------------------------------------


def chaos_settings(data: Path) -> Settings:
    """The settings of a fresh stack in ``data`` on free loopback ports, whatever the environment says."""
    return loopback_settings(data, task_queue=f"chaos-{uuid.uuid4().hex[:12]}")


async def bench_chaos(
    config: ChaosConfig, *, on_progress: Callable[[ChaosProgress], None] | None = None
) -> ChaosReport:
    """Run the chaos bench on a fresh embedded stack of its own (temporary data, free ports); see the module."""
    began = time.monotonic()
    say = on_progress or (lambda progress: None)
    with tempfile.TemporaryDirectory(prefix="quantum-chaos-", ignore_cleanup_errors=True) as tmp:
        data = Path(tmp).resolve()
        settings = chaos_settings(data)
        say(ChaosProgress("starting a fresh embedded stack", config.runs, 0, 0, config.kills))
        async with EmbeddedStack(settings) as stack:
            client = await connect(settings, address=stack.temporal_address)
            nc = await connect_nats(stack.nats_url)
            bench = _Bench(config, settings, stack, client, say)
            try:
                js = nc.jetstream()
                await ensure_streams(js, settings.stream_limits())
                bench.progress()
                await bench.start_runs()
                await bench.kill_at_random_moments()
                await bench.wait_ended()
                failovers = await bench.failovers()
                bench.progress("counting side effects")
                outcomes, views = await bench.outcomes()
                effects = await side_effects(js, data, outcomes, views)
                bench.progress("stopping the workers and the stack")
            finally:
                await bench.stop()
                await nc.close()
        orphans = await left_behind(data)
    return ChaosReport(
        config=config,
        outcomes=outcomes,
        kills=bench.kills,
        failovers=failovers,
        effects=effects,
        orphans=orphans,
        seconds=time.monotonic() - began,
        notes=[
            "failover: from the SIGKILL to the next attempt's start as Temporal records it (the pending activity's "
            "last_started_time, or the history's ActivityTaskStarted); Temporal notices a dead worker when its "
            f"activity misses the {HEARTBEAT.total_seconds():g} s heartbeat timeout, counted from the last heartbeat "
            "it recorded",
            "side effects: outbound events by event id on QUANTUM_EVENTS; release host processes, the run's stream, "
            "directory, release record and monitoring files by run; processes left in the data directory",
        ],
    )
