"""The operators' Prometheus alert rules, as data: one rule file for the worker and the bridge of a deployment.

Each alert names its runbook section in ``docs/operations.md`` (``runbook_url``), which says what to look at first
and how to resolve it; a test checks every anchor exists there.

The pipeline failure share counts ``failed`` and ``timed_out`` runs among the runs the pipeline decided
(``succeeded``, ``failed``, ``timed_out``). ``rejected`` and ``cancelled`` runs are left out of both sides: they
are a reviewer's or an operator's decision, not a fault of the pipeline, and a rejected run proves the gate did its
job. A gate that expired (``timed_out``) does count: nobody acted in time.

Ratios ask for a minimum of events in their window, so one failed run out of one does not page anyone; events that
leave work for a human (a partial compensation, a dead letter, a gate past its SLA) alert on the first occurrence
and stay firing for an hour, so the alert is seen before it resolves by itself.
"""

from __future__ import annotations

from typing import Any

import yaml

from quantum.observability.promql import WORKER_JOB, counted, series

RUNBOOK = "docs/operations.md"
GROUP = "quantum-suite"

RATIO_WINDOW = "15m"
EVENT_WINDOW = "1h"
FAILURE_SHARE = 0.25
MIN_DECIDED_RUNS = 3
MODEL_ERROR_SHARE = 0.2
MIN_MODEL_REQUESTS = 5
BRIDGE_LAG_SECONDS = 60

DECIDED = "succeeded|failed|timed_out"
NOT_SUCCEEDED = "failed|timed_out"


def runbook_anchor(alert: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give the runbook heading named ``alert``."""
    return alert.lower()


def _ratio(by: str, part: str, whole: str, above: float, at_least: int) -> str:
    """``part`` / ``whole`` per ``by`` when above ``above``, only where ``whole`` counted ``at_least`` events.

    ``and`` keeps the left side, so the alert's value is the share itself.
    """
    whole_count = f"sum by ({by}) {counted(whole, RATIO_WINDOW)}"
    return (
        f"(\n  sum by ({by}) {counted(part, RATIO_WINDOW)}\n/\n  {whole_count}\n) > {above}\n"
        f"and\n{whole_count} >= {at_least}"
    )


def _events(by: str, selector: str) -> str:
    """Every ``by`` group of the counter ``selector`` that grew within the event window."""
    return f"sum by ({by}) {counted(selector, EVENT_WINDOW)} > 0"


def _rule(
    alert: str, expr: str, severity: str, summary: str, description: str, for_: str | None = None
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": alert, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": f"{RUNBOOK}#{runbook_anchor(alert)}",
    }
    return rule


def rules() -> list[dict[str, Any]]:
    """The alert rules, in the order of their runbook sections."""
    finished = "quantum_runs_finished_total"
    requests = "quantum_llm_requests_total"
    return [
        _rule(
            "QuantumPipelineFailureRateHigh",
            _ratio(
                "workflow_type",
                series(finished, f'status=~"{NOT_SUCCEEDED}"'),
                series(finished, f'status=~"{DECIDED}"'),
                FAILURE_SHARE,
                MIN_DECIDED_RUNS,
            ),
            "warning",
            "{{ $value | humanizePercentage }} of {{ $labels.workflow_type }} runs failed or timed out",
            f"Over {RATIO_WINDOW}, more than {FAILURE_SHARE:.0%} of the runs of this workflow type that ended "
            "succeeded, failed or timed out did not succeed (rejected and cancelled runs are not counted).",
            for_="5m",
        ),
        _rule(
            "QuantumRunsPartiallyCompensated",
            _events("workflow_type", "quantum_runs_partially_compensated_total"),
            "critical",
            "A {{ $labels.workflow_type }} run was left partially compensated",
            f"In the last {EVENT_WINDOW} a compensation failed and its run ended with what it created only partly "
            "undone: it needs cleaning up by hand.",
        ),
        _rule(
            "QuantumDeadLettersGrowing",
            _events("reason", "quantum_bridge_dead_letters_total"),
            "warning",
            "Inbound events were dead-lettered: {{ $labels.reason }}",
            f"In the last {EVENT_WINDOW} the bridge moved inbound events to QUANTUM_DLQ; their requests, reviews or "
            "cancellations were not acted on.",
        ),
        _rule(
            "QuantumEventsUnpublished",
            _events("type", "quantum_events_unpublished_total"),
            "warning",
            "Outbound events were not published: {{ $labels.type }}",
            f"In the last {EVENT_WINDOW} a worker gave up publishing events its runs announced (the bus did not "
            "answer for a minute, or refused them): consumers of these events did not hear of those runs.",
        ),
        _rule(
            "QuantumGatesPastSLA",
            _events("workflow_type, gate", "quantum_gates_escalated_total"),
            "warning",
            "A {{ $labels.gate }} gate of {{ $labels.workflow_type }} is past its review SLA",
            f"In the last {EVENT_WINDOW} a gate waited 80% of its timeout without a decision; when the timeout "
            "passes, its run is compensated and ends timed_out.",
        ),
        _rule(
            "QuantumBridgeLagHigh",
            f"max by (job, instance) (quantum_bridge_lag_seconds) > {BRIDGE_LAG_SECONDS}",
            "critical",
            "The bridge at {{ $labels.instance }} is {{ $value | humanizeDuration }} behind",
            f"The oldest unacknowledged inbound event has waited more than {BRIDGE_LAG_SECONDS}s for 5m: requests, "
            "reviews and cancellations are not being acted on.",
            for_="5m",
        ),
        _rule(
            "QuantumWorkerSlotsExhausted",
            f"sum by (job, instance, worker_type) ({series('temporal_worker_task_slots_available', WORKER_JOB)}) == 0",
            "critical",
            "{{ $labels.worker_type }} of {{ $labels.instance }} has no free task slots",
            "The worker has had no free slot of this kind for 5m: new tasks wait in the queue until a running one "
            "ends.",
            for_="5m",
        ),
        _rule(
            "QuantumModelErrors",
            _ratio(
                "model",
                series(requests, 'outcome="error"'),
                requests,
                MODEL_ERROR_SHARE,
                MIN_MODEL_REQUESTS,
            ),
            "warning",
            "{{ $value | humanizePercentage }} of requests to {{ $labels.model }} fail",
            f"Over {RATIO_WINDOW}, more than {MODEL_ERROR_SHARE:.0%} of the model's requests failed: the runs that "
            "need it fail their code or test generation.",
            for_="10m",
        ),
    ]


def rule_file() -> dict[str, Any]:
    """The Prometheus rule file: one group holding every rule."""
    return {"groups": [{"name": GROUP, "rules": rules()}]}


class _RuleDumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML ships without type hints
    """Writes multi-line strings (the expressions) as literal blocks, as one would write them by hand."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_RuleDumper.add_representer(str, _string)


def rule_file_yaml() -> str:
    """The rule file as YAML, headed by where it comes from."""
    # an infinite width: descriptions stay on one line, as they read in an alert
    body: str = yaml.dump(rule_file(), Dumper=_RuleDumper, sort_keys=False, allow_unicode=True, width=float("inf"))
    return (
        "# Generated from quantum/observability/alerts.py by `python -m quantum.observability`: do not edit.\n" + body
    )
