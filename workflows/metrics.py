"""What runs count and time, recorded through ``workflow.metric_meter()``.

The meter is Temporal's: it records nothing while a workflow replays, so a run is counted once however many workers
replay it (after a restart, an eviction from the sticky cache, a query of a closed run). Durations are differences of
``workflow.now()``, the workflow task's recorded time. The worker exposes these on its ``/metrics`` with the SDK's
own (``quantum/telemetry.py``); each carries ``namespace``, ``task_queue`` and ``workflow_type``, which the meter
adds. Every label value is one of a bounded set (statuses, stage, gate and step names, refusal kinds).
"""

from __future__ import annotations

from temporalio import workflow


def _count(name: str, description: str, attributes: dict[str, str]) -> None:
    workflow.metric_meter().create_counter(name, description).add(1, attributes)


def _seconds(name: str, description: str, seconds: float, attributes: dict[str, str]) -> None:
    histogram = workflow.metric_meter().create_histogram_float(name, description, unit="s")
    histogram.record(max(0.0, seconds), attributes)


def run_started() -> None:
    _count("quantum_runs_started", "Runs started", {})


def run_finished(status: str, seconds: float) -> None:
    _count("quantum_runs_finished", "Runs finished, by status", {"status": status})
    _seconds("quantum_run_duration_seconds", "Wall time of a run, by status", seconds, {"status": status})


def stage_ended(stage: str, outcome: str, seconds: float) -> None:
    attributes = {"stage": stage, "outcome": outcome}
    _seconds("quantum_stage_duration_seconds", "Wall time of a stage, by stage and outcome", seconds, attributes)


def compensation(step: str, outcome: str) -> None:
    _count("quantum_compensations", "Compensations run, by step and outcome", {"step": step, "outcome": outcome})


def partially_compensated() -> None:
    _count("quantum_runs_partially_compensated", "Runs that stopped with a compensation that failed", {})


def gate_opened(gate: str) -> None:
    _count("quantum_gates_opened", "Review gates opened", {"gate": gate})


def gate_decided(gate: str, outcome: str, seconds: float) -> None:
    attributes = {"gate": gate, "outcome": outcome}
    _seconds("quantum_gate_wait_seconds", "How long a gate waited for its outcome", seconds, attributes)


def gate_escalated(gate: str) -> None:
    _count("quantum_gates_escalated", "Gates that waited 80 % of their timeout (past their SLA)", {"gate": gate})


def review_refused(reason: str) -> None:
    _count("quantum_reviews_refused", "Reviews refused, by kind of reason", {"reason": reason})
