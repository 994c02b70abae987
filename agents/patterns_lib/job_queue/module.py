"""{{title}}: a priority job queue with retries and dead-lettering.

Generated for the request: {{prompt}}

Pure in-memory and deterministic: lower ``priority`` numbers run first, equal priorities run in submission order,
a failed job goes back behind its equals, and after ``max_attempts`` failures it moves to the dead-letter list.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

JobHandler = Callable[[Any], Any]
Outcome = Literal["done", "retry", "dead"]


@dataclass
class Job:
    id: str
    kind: str
    payload: Any
    priority: int
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    result: Any = None


@dataclass(frozen=True)
class RunResult:
    job: Job
    outcome: Outcome


class JobQueue:
    """Jobs of a ``kind`` are run by the handler registered for it; exceptions count as failures."""

    def __init__(self, *, max_attempts: int = 3) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self._handlers: dict[str, JobHandler] = {}
        self._heap: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self.completed: list[Job] = []
        self.dead_letters: list[Job] = []

    def register(self, kind: str, handler: JobHandler) -> None:
        self._handlers[kind] = handler

    def _push(self, job: Job) -> None:
        heapq.heappush(self._heap, (job.priority, next(self._seq), job))

    def submit(self, kind: str, payload: Any = None, *, priority: int = 0) -> Job:
        job = Job(id=f"job-{next(self._ids)}", kind=kind, payload=payload, priority=priority)
        self._push(job)
        return job

    def run_next(self) -> RunResult | None:
        """Run the most urgent job once; None when the queue is empty."""
        if not self._heap:
            return None
        _, _, job = heapq.heappop(self._heap)
        job.attempts += 1
        handler = self._handlers.get(job.kind)
        try:
            if handler is None:
                raise LookupError(f"no handler registered for {job.kind!r}")
            job.result = handler(job.payload)
        except Exception as err:  # a failing job is data, not a crash of the queue
            job.errors.append(f"{type(err).__name__}: {err}")
            if job.attempts >= self.max_attempts or handler is None:
                self.dead_letters.append(job)
                return RunResult(job, "dead")
            self._push(job)
            return RunResult(job, "retry")
        self.completed.append(job)
        return RunResult(job, "done")

    def run_all(self, *, limit: int | None = None) -> list[RunResult]:
        """Run until the queue is empty (or ``limit`` runs), returning what happened in order."""
        results: list[RunResult] = []
        while limit is None or len(results) < limit:
            result = self.run_next()
            if result is None:
                break
            results.append(result)
        return results

    def requeue_dead(self, job_id: str) -> Job:
        """Give a dead-lettered job a fresh set of attempts."""
        for index, job in enumerate(self.dead_letters):
            if job.id == job_id:
                del self.dead_letters[index]
                job.attempts = 0
                self._push(job)
                return job
        raise KeyError(f"no dead-lettered job {job_id!r}")

    def __len__(self) -> int:
        return len(self._heap)
