"""The operators' Grafana dashboards, built with grafana-foundation-sdk: Pipelines, Bus and Workers.

Each dashboard picks its Prometheus through a ``datasource`` variable, so one JSON file imports into any Grafana.
Panels come in three kinds, by how often what they show happens:

- *trends* (time series) for what happens many times a minute: rates over ``$__rate_interval``, and quantiles of
  durations over a sliding hour where runs and stages are too rare for a shorter window;
- *tallies* (bar gauges) for what happens a few times a day: how many in the dashboard's time range
  (``$__range``), counted by :func:`quantum.observability.promql.counted` so that the first event of each kind
  counts too;
- *totals* (stats) for one number that should be zero.

:func:`panel_queries` gives every query with its variables replaced by concrete values, and the labels its legend
names, so the queries can be evaluated against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from grafana_foundation_sdk.builders.bargauge import Panel as BarGaugePanel
from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    VizOrientation,
)

from quantum.observability.promql import WORKER_JOB, counted, quantile, series

TAG = "quantum-suite"
TIME_RANGE = "6h"
RATE = "$__rate_interval"
RANGE = "$__range"
# Runs, stages and gates end a few times an hour at most: their quantiles need a longer window than a rate does.
SLOW_WINDOW = "1h"
# What $__rate_interval is at Prometheus' default 15 s scrape interval (four scrapes), for panel_queries.
RATE_INTERVAL_VALUE = "1m"

SOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
WORKFLOW_TYPE = 'workflow_type=~"$workflow_type"'
WORKER = f'{WORKER_JOB}, instance=~"$instance"'


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel, and its legend (``{{label}}`` names a label the query keeps)."""

    expr: str
    legend: str


PanelBuilder = TypeVar("PanelBuilder", TimeseriesPanel, BarGaugePanel, StatPanel)


def _targets(panel: PanelBuilder, queries: tuple[Query, ...], *, instant: bool) -> PanelBuilder:
    """``panel`` with one target per query, refs A, B, ...; ``instant`` queries are evaluated once, at the end."""
    for ref, query in zip(string.ascii_uppercase, queries, strict=False):
        target = Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref)
        panel = panel.with_target(target.instant() if instant else target)
    return panel.span(12).height(8)


def trend(title: str, unit: str, description: str, *queries: Query) -> TimeseriesPanel:
    """A time series panel of ``queries``."""
    panel = TimeseriesPanel().title(title).description(description).unit(unit).datasource(SOURCE).min(0)
    return _targets(panel, queries, instant=False)


def tally(title: str, unit: str, description: str, *queries: Query) -> BarGaugePanel:
    """A bar gauge of ``queries`` evaluated once, at the end of the time range: one bar per series."""
    panel = (
        BarGaugePanel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(SOURCE)
        .min(0)
        .orientation(VizOrientation.HORIZONTAL)
        .display_mode(BarGaugeDisplayMode.GRADIENT)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return _targets(panel, queries, instant=True)


def total(title: str, description: str, query: Query) -> StatPanel:
    """A stat of one count that should be zero: green at zero, red from one, 0 (not "No data") when nothing grew."""
    panel = (
        StatPanel()
        .title(title)
        .description(description)
        .unit("short")
        .datasource(SOURCE)
        .no_value("0")
        .graph_mode(BigValueGraphMode.NONE)
        .color_mode(BigValueColorMode.BACKGROUND)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(
            ThresholdsConfig()
            .mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=None, color="green"), model.Threshold(value=1, color="red")])
        )
    )
    return _targets(panel, (query,), instant=True)


AnyPanel = TimeseriesPanel | BarGaugePanel | StatPanel
Section = tuple[str, list[AnyPanel]]


def board(
    title: str, uid: str, description: str, variables: list[QueryVariable], sections: list[Section]
) -> dict[str, Any]:
    """A dashboard of ``sections`` (a row, then its panels two abreast), as Grafana's JSON model.

    Panel ids are given in order, so links to a panel (``viewPanel=<id>``) stay valid when the code is regenerated.
    """
    dashboard = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["quantum", TAG])
        .refresh("30s")
        .time(f"now-{TIME_RANGE}", "now")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .link(
            DashboardLink("Quantum Suite")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .keep_time(True)
            .include_vars(False)
        )
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    for variable in variables:
        dashboard = dashboard.with_variable(variable)
    panel_id = 0
    for row_title, panels in sections:
        panel_id += 1
        dashboard = dashboard.with_row(Row(row_title).id(panel_id))
        for panel in panels:
            panel_id += 1
            dashboard = dashboard.with_panel(panel.id(panel_id))
    encoded: dict[str, Any] = json.loads(JSONEncoder().encode(dashboard.build()))
    return encoded


def label_variable(name: str, label: str, selector: str) -> QueryVariable:
    """A multi-value variable over the values of label ``name`` in ``selector``; "All" matches any value (``.*``)."""
    return (
        QueryVariable(name)
        .label(label)
        .datasource(SOURCE)
        .query(f"label_values({selector}, {name})")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def pipelines() -> dict[str, Any]:
    """Runs, their stages, compensations and gates, and what the agents did for them."""
    w = WORKFLOW_TYPE
    duration = "quantum_run_duration_seconds"
    opened = series("quantum_gates_opened_total", w)
    decided = series("quantum_gate_wait_seconds_count", w)
    waiting = f"sum by (gate) ({opened}) - (sum by (gate) ({decided}) or sum by (gate) ({opened}) * 0)"
    runs: list[AnyPanel] = [
        trend(
            "Runs per hour by status",
            "short",
            "Runs started, and runs finished by status, in the hour before each point.",
            Query(
                f"sum by (workflow_type) {counted(series('quantum_runs_started_total', w), SLOW_WINDOW)}",
                "{{workflow_type}} started",
            ),
            Query(
                f"sum by (workflow_type, status) {counted(series('quantum_runs_finished_total', w), SLOW_WINDOW)}",
                "{{workflow_type}} {{status}}",
            ),
        ),
        trend(
            "Run duration",
            "s",
            "p50, p95 and p99 of how long a run took, start to end, over the hour before each point.",
            *(
                Query(quantile(q, duration, w, "workflow_type", SLOW_WINDOW), "{{workflow_type}} " + name)
                for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
            ),
        ),
        trend(
            "Stage duration p95 by stage",
            "s",
            "p95 of each stage's duration, whatever its outcome, over the hour before each point.",
            Query(quantile(0.95, "quantum_stage_duration_seconds", w, "stage", SLOW_WINDOW), "{{stage}}"),
        ),
    ]
    compensation: list[AnyPanel] = [
        tally(
            "Compensations by step and outcome",
            "short",
            "Compensations run in the time range. A failed one leaves its run partially compensated.",
            Query(
                f"sum by (step, outcome) {counted(series('quantum_compensations_total', w), RANGE)}",
                "{{step}} {{outcome}}",
            ),
        ),
        total(
            "Runs left partially compensated",
            "Runs in the time range whose compensation failed: each needs cleaning up by hand (see the runbook).",
            Query(
                f"sum {counted(series('quantum_runs_partially_compensated_total', w), RANGE)}", "partially compensated"
            ),
        ),
    ]
    gates: list[AnyPanel] = [
        trend(
            "Gates waiting by gate",
            "short",
            "Gates opened minus gates decided (approved, rejected, expired or cancelled). Counters restart with the "
            "worker, so this is an estimate: `quantum reviews pending` lists the gates that really wait.",
            Query(f"clamp_min({waiting}, 0)", "{{gate}}"),
        ),
        tally(
            "Gate wait p95 by gate and outcome",
            "s",
            "p95 of how long a gate waited for its decision, for the gates decided in the time range.",
            Query(quantile(0.95, "quantum_gate_wait_seconds", w, "gate, outcome", RANGE), "{{gate}} {{outcome}}"),
        ),
        tally(
            "Gates escalated (past SLA)",
            "short",
            "Gates that waited 80 % of their timeout without a decision, in the time range.",
            Query(f"sum by (gate) {counted(series('quantum_gates_escalated_total', w), RANGE)}", "{{gate}}"),
        ),
        tally(
            "Reviews refused by reason",
            "short",
            "Reviews refused in the time range, by reason: many `bad_signature` or `replayed` deserve a look.",
            Query(f"sum by (reason) {counted(series('quantum_reviews_refused_total', w), RANGE)}", "{{reason}}"),
        ),
    ]
    agents_note = " Agents' metrics carry no workflow type: this panel shows every run."
    agents: list[AnyPanel] = [
        tally(
            "Findings by tool and severity",
            "short",
            "Security findings in the time range." + agents_note,
            Query(f"sum by (tool, severity) {counted('quantum_findings_total', RANGE)}", "{{tool}} {{severity}}"),
        ),
        tally(
            "Sandbox runs by outcome and isolation",
            "short",
            "Sandboxed runs of generated code in the time range; `isolation` says whether bubblewrap was used."
            + agents_note,
            Query(
                f"sum by (outcome, isolation) {counted('quantum_sandbox_runs_total', RANGE)}",
                "{{outcome}} {{isolation}}",
            ),
        ),
        trend(
            "Model requests by outcome",
            "reqps",
            "Requests to each model." + agents_note,
            Query(f"sum by (model, outcome) (rate(quantum_llm_requests_total[{RATE}]))", "{{model}} {{outcome}}"),
        ),
        trend(
            "Model tokens by kind",
            "short",
            "Tokens per second, prompt and completion, by model." + agents_note,
            Query(f"sum by (model, kind) (rate(quantum_llm_tokens_total[{RATE}]))", "{{model}} {{kind}}"),
        ),
        tally(
            "Model cost",
            "short",
            "What the model requests cost in the time range, in the configured currency." + agents_note,
            Query(f"sum by (model) {counted('quantum_llm_cost_total', RANGE)}", "{{model}}"),
        ),
        trend(
            "Model latency p95",
            "s",
            "p95 of one model request's latency." + agents_note,
            Query(quantile(0.95, "quantum_llm_latency_seconds", "", "model", RATE), "{{model}}"),
        ),
    ]
    return board(
        "Quantum Suite / Pipelines",
        "quantum-pipelines",
        "Runs, stages, compensations and review gates of the Quantum Suite workflows, and their agents' work.",
        [label_variable("workflow_type", "Workflow type", "quantum_runs_started_total")],
        [("Runs", runs), ("Compensation", compensation), ("Review gates", gates), ("Agents", agents)],
    )


def bus() -> dict[str, Any]:
    """The bridge from NATS to Temporal, and the events the runs publish."""
    inbound: list[AnyPanel] = [
        trend(
            "Inbound events by type and outcome",
            "ops",
            "Events the bridge handled, by what it did with them.",
            Query(f"sum by (type, outcome) (rate(quantum_bridge_events_total[{RATE}]))", "{{type}} {{outcome}}"),
        ),
        trend(
            "Runs started by the bridge",
            "ops",
            "Inbound requests that started a run (a duplicate or a redelivery starts none).",
            Query(f'sum by (type) (rate(quantum_bridge_events_total{{outcome="started"}}[{RATE}]))', "{{type}}"),
        ),
        tally(
            "Dead letters by reason",
            "short",
            "Inbound events moved to QUANTUM_DLQ in the time range: `quantum dlq list` shows them.",
            Query(f"sum by (reason) {counted('quantum_bridge_dead_letters_total', RANGE)}", "{{reason}}"),
        ),
        trend(
            "Bridge lag",
            "s",
            "Age of the oldest inbound event not yet acknowledged; 0 when the bridge has caught up.",
            Query("max by (instance) (quantum_bridge_lag_seconds)", "{{instance}}"),
        ),
        trend(
            "Redeliveries",
            "ops",
            "Inbound events delivered again after a negative acknowledgement or an acknowledgement timeout.",
            Query(f"sum by (instance) (rate(quantum_bridge_redeliveries_total[{RATE}]))", "{{instance}}"),
        ),
        trend(
            "Bridge start latency p95",
            "s",
            "p95 of the time from receiving a request to Temporal accepting its run.",
            Query(quantile(0.95, "quantum_bridge_start_latency_seconds", "", "", RATE), "p95"),
        ),
    ]
    outbound: list[AnyPanel] = [
        trend(
            "Events published by type",
            "ops",
            "Events the runs announced. A duplicate (a retried activity or a replayed run) is dropped by JetStream.",
            Query(
                f"sum by (type, duplicate) (rate(quantum_events_published_total[{RATE}]))",
                "{{type}} (duplicate: {{duplicate}})",
            ),
        ),
        trend(
            "Events not published by type",
            "ops",
            "Events a worker gave up publishing: the bus did not answer for a minute, or refused the event.",
            Query(f"sum by (type) (rate(quantum_events_unpublished_total[{RATE}]))", "{{type}}"),
        ),
    ]
    return board(
        "Quantum Suite / Bus",
        "quantum-bus",
        "The NATS bridge that turns inbound events into runs, reviews and cancellations, and the events runs publish.",
        [],
        [("Inbound", inbound), ("Outbound", outbound)],
    )


def workers() -> dict[str, Any]:
    """The Temporal workers: slots, pollers, latencies, the sticky cache and failing activities."""
    i = WORKER
    capacity: list[AnyPanel] = [
        trend(
            "Task slots available by worker type",
            "short",
            "Free slots; none for long means tasks wait in the queue (QuantumWorkerSlotsExhausted).",
            Query(
                f"sum by (instance, worker_type) ({series('temporal_worker_task_slots_available', i)})",
                "{{instance}} {{worker_type}}",
            ),
        ),
        trend(
            "Task slots used by worker type",
            "short",
            "Slots taken by running tasks.",
            Query(
                f"sum by (instance, worker_type) ({series('temporal_worker_task_slots_used', i)})",
                "{{instance}} {{worker_type}}",
            ),
        ),
        trend(
            "Pollers",
            "short",
            "Pollers waiting on the task queue, by type.",
            Query(
                f"sum by (instance, poller_type) ({series('temporal_num_pollers', i)})", "{{instance}} {{poller_type}}"
            ),
        ),
    ]
    latency: list[AnyPanel] = [
        trend(
            "Workflow task schedule-to-start p95",
            "s",
            "How long a workflow task waited for a worker: high means too few workflow slots or workers.",
            Query(
                quantile(0.95, "temporal_workflow_task_schedule_to_start_latency_seconds", i, "instance", RATE),
                "{{instance}}",
            ),
        ),
        trend(
            "Activity schedule-to-start p95",
            "s",
            "How long an activity waited for a worker: high means too few activity slots or workers.",
            Query(
                quantile(0.95, "temporal_activity_schedule_to_start_latency_seconds", i, "instance", RATE),
                "{{instance}}",
            ),
        ),
        trend(
            "Workflow task execution p95",
            "s",
            "How long the worker took to run a workflow task; workflow code does no I/O, so this stays short.",
            Query(
                quantile(0.95, "temporal_workflow_task_execution_latency_seconds", i, "instance", RATE), "{{instance}}"
            ),
        ),
        trend(
            "Long-poll latency p95 by operation",
            "s",
            "How long the worker's long polls to Temporal waited, by operation.",
            Query(
                quantile(0.95, "temporal_long_request_latency_seconds", i, "instance, operation", RATE),
                "{{instance}} {{operation}}",
            ),
        ),
    ]
    cache: list[AnyPanel] = [
        trend(
            "Sticky cache size",
            "short",
            "Workflows kept in the worker's cache, so their next task needs no replay.",
            Query(f"sum by (instance) ({series('temporal_sticky_cache_size', i)})", "{{instance}}"),
        ),
        trend(
            "Sticky cache hit rate",
            "ops",
            "Workflow tasks served from the cache.",
            Query(f"sum by (instance) (rate({series('temporal_sticky_cache_hit_total', i)}[{RATE}]))", "{{instance}}"),
        ),
    ]
    failures: list[AnyPanel] = [
        tally(
            "Activity failures by activity and error type",
            "short",
            "Activity attempts that failed in the time range; Temporal retries those that can be retried.",
            Query(
                f"sum by (activity, error_type) {counted(series('quantum_activity_failures_total', i), RANGE)}",
                "{{activity}} {{error_type}}",
            ),
        ),
        trend(
            "Temporal requests by operation",
            "reqps",
            "Calls the worker makes to Temporal.",
            Query(
                f"sum by (instance, operation) (rate({series('temporal_request_total', i)}[{RATE}]))",
                "{{instance}} {{operation}}",
            ),
        ),
    ]
    return board(
        "Quantum Suite / Workers",
        "quantum-workers",
        "The Temporal workers of Quantum Suite: task slots, pollers, latencies, the sticky cache and failures.",
        [label_variable("instance", "Worker", series("temporal_worker_task_slots_available", WORKER_JOB))],
        [("Capacity", capacity), ("Latency", latency), ("Sticky cache", cache), ("Failures and requests", failures)],
    )


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard's JSON model, by its file name (the dashboard's uid)."""
    return {f"{board['uid']}.json": board for board in (pipelines(), bus(), workers())}


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_RELATIVE_FROM = re.compile(r"now-(\d+[smhdwy])")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside a collapsed row (which Grafana nests in the row) included."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(panel title, query as Prometheus would run it, labels its legend names) for every query of ``dashboard``.

    Read from the JSON model, as Grafana would: a label variable becomes its "All" value (``.*``), ``$__range``
    the dashboard's default time range and ``$__rate_interval`` what it is at a 15 s scrape interval. A variable
    Grafana would not know is an error.
    """
    time_range = _RELATIVE_FROM.fullmatch(dashboard["time"]["from"])
    if not time_range:
        raise ValueError(f"{dashboard['uid']}: a time range of {dashboard['time']['from']!r} has no fixed length")
    values = {"__rate_interval": RATE_INTERVAL_VALUE, "__range": time_range.group(1)}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            values[variable["name"]] = variable["allValue"]

    found = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets") or []:

            def value(match: re.Match[str], title: str = panel["title"]) -> str:
                name = next(group for group in match.groups() if group)
                if name not in values:
                    raise ValueError(f"{dashboard['uid']}: panel {title!r} uses an unknown variable {name!r}")
                return values[name]

            expr = _VARIABLE.sub(value, target["expr"])
            found.append((panel["title"], expr, _LEGEND_LABEL.findall(target.get("legendFormat", ""))))
    return found
