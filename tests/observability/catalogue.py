"""Every metric the dashboards and the alert rules read, as the product exposes it, with example label values.

The live test serves these from two registries (the worker's and the bridge's) for a real Prometheus to scrape, and
the runbook's metrics table must name each of them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

WORKER = "quantum-worker"
BRIDGE = "quantum-bridge"

# What Temporal's workflow metric meter adds to every workflow-side metric.
WORKFLOW_SIDE = {
    "namespace": ("default",),
    "task_queue": ("quantum-workflows",),
    "service_name": ("temporal-core-sdk",),
    "workflow_type": ("DevSecOpsPipelineWorkflow", "CodeGenerationWorkflow"),
}


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter, gauge or histogram
    labels: dict[str, tuple[str, ...]]
    job: str = WORKER

    def children(self) -> list[dict[str, str]]:
        """One label set per combination of the example values."""
        names = sorted(self.labels)
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*(self.labels[n] for n in names))]


def _workflow(name: str, kind: str, **labels: tuple[str, ...]) -> Metric:
    return Metric(name, kind, {**WORKFLOW_SIDE, **labels})


METRICS = [
    _workflow("quantum_runs_started_total", "counter"),
    _workflow("quantum_runs_finished_total", "counter", status=("succeeded", "failed", "rejected")),
    _workflow("quantum_run_duration_seconds", "histogram", status=("succeeded", "failed")),
    _workflow("quantum_stage_duration_seconds", "histogram", stage=("generate_code", "deploy"), outcome=("succeeded",)),
    _workflow("quantum_compensations_total", "counter", step=("cleanup_code",), outcome=("completed", "failed")),
    _workflow("quantum_runs_partially_compensated_total", "counter"),
    _workflow("quantum_gates_opened_total", "counter", gate=("security", "deploy")),
    _workflow("quantum_gate_wait_seconds", "histogram", gate=("security",), outcome=("approved", "expired")),
    _workflow("quantum_gates_escalated_total", "counter", gate=("deploy",)),
    _workflow("quantum_reviews_refused_total", "counter", reason=("requester", "bad_signature")),
    Metric(
        "quantum_activity_failures_total", "counter", {"activity": ("deploy.deploy",), "error_type": ("ToolFailure",)}
    ),
    Metric(
        "quantum_bridge_events_total",
        "counter",
        {"type": ("quantum.pipeline.requested",), "outcome": ("started", "duplicate")},
        BRIDGE,
    ),
    Metric("quantum_bridge_dead_letters_total", "counter", {"reason": ("MalformedEvent",)}, BRIDGE),
    Metric("quantum_bridge_lag_seconds", "gauge", {}, BRIDGE),
    Metric("quantum_bridge_redeliveries_total", "counter", {}, BRIDGE),
    Metric("quantum_bridge_start_latency_seconds", "histogram", {}, BRIDGE),
    Metric(
        "quantum_events_published_total",
        "counter",
        {"type": ("quantum.pipeline.completed",), "duplicate": ("false", "true")},
    ),
    Metric("quantum_events_unpublished_total", "counter", {"type": ("quantum.stage.completed",)}),
    Metric("quantum_llm_requests_total", "counter", {"model": ("gpt-test",), "outcome": ("ok", "error")}),
    Metric("quantum_llm_tokens_total", "counter", {"model": ("gpt-test",), "kind": ("prompt", "completion")}),
    Metric("quantum_llm_cost_total", "counter", {"model": ("gpt-test",)}),
    Metric("quantum_llm_latency_seconds", "histogram", {"model": ("gpt-test",)}),
    Metric("quantum_findings_total", "counter", {"tool": ("bandit",), "severity": ("high", "critical")}),
    Metric("quantum_sandbox_runs_total", "counter", {"outcome": ("passed",), "isolation": ("bubblewrap",)}),
    Metric("temporal_worker_task_slots_available", "gauge", {"worker_type": ("WorkflowWorker", "ActivityWorker")}),
    Metric("temporal_worker_task_slots_used", "gauge", {"worker_type": ("WorkflowWorker", "ActivityWorker")}),
    Metric("temporal_workflow_task_schedule_to_start_latency_seconds", "histogram", {}),
    Metric("temporal_activity_schedule_to_start_latency_seconds", "histogram", {}),
    Metric("temporal_sticky_cache_size", "gauge", {}),
    Metric("temporal_sticky_cache_hit_total", "counter", {}),
    Metric("temporal_workflow_task_execution_latency_seconds", "histogram", {}),
    Metric("temporal_num_pollers", "gauge", {"poller_type": ("workflow_task", "activity_task")}),
    Metric("temporal_request_total", "counter", {"operation": ("RespondWorkflowTaskCompleted",)}),
    Metric("temporal_long_request_latency_seconds", "histogram", {"operation": ("PollWorkflowTaskQueue",)}),
]


class Exposition:
    """The catalogue's metrics in one registry per job; each :meth:`step` makes every series move."""

    def __init__(self) -> None:
        self.registries = {WORKER: CollectorRegistry(), BRIDGE: CollectorRegistry()}
        self._metrics: list[tuple[Metric, Counter | Gauge | Histogram]] = []
        kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
        for metric in METRICS:
            make = kinds[metric.kind]
            collector = make(metric.name, metric.name, sorted(metric.labels), registry=self.registries[metric.job])
            self._metrics.append((metric, collector))

    def step(self) -> None:
        for metric, collector in self._metrics:
            for labels in metric.children():
                child = collector.labels(**labels) if labels else collector
                if isinstance(child, Counter):
                    child.inc()
                elif isinstance(child, Gauge):
                    child.inc(2)
                else:
                    child.observe(0.5)
