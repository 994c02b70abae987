"""Timeout and retry presets for every activity the workflows run, in one place."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

from agents.errors import NON_RETRYABLE_TYPES
from workflows.patches import WAIT_FOR_CANCELLATION_PATCH, taken

_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=list(NON_RETRYABLE_TYPES),
)

HEARTBEAT = timedelta(seconds=15)
"""Every activity heartbeats (the worker's heartbeat interceptor): a dead worker's activity is retried elsewhere
within this time (``quantum bench chaos`` measures it), and a cancellation reaches a running activity. The SDK sends
a heartbeat at most every 80 % of it."""


QUICK: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=180),
    "heartbeat_timeout": HEARTBEAT,
    "retry_policy": _RETRY,
}
"""File work in the workspace and model calls: generate, validate, fingerprint."""

TOOL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=10),
    "heartbeat_timeout": HEARTBEAT,
    "retry_policy": _RETRY,
}
"""Running pytest or a scanner."""

INFRA: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=5),
    "heartbeat_timeout": HEARTBEAT,
    "retry_policy": _RETRY,
}
"""Provisioning and deploying."""


def stage(preset: dict[str, Any]) -> dict[str, Any]:
    """``preset`` for a stage whose effects may be compensated: when the run is cancelled, it waits until the
    activity has really stopped (its sandbox killed, its release stopped) before anything else runs.

    Workflow code only (it consults a patch marker).
    """
    if not taken(WAIT_FOR_CANCELLATION_PATCH):
        return preset
    return {**preset, "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED}


COMPENSATION: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=2),
    "heartbeat_timeout": HEARTBEAT,
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=3,
    ),
}
"""Undoing a step: a few quick retries, then the failure is recorded and the next compensation runs."""

PUBLISH: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "schedule_to_close_timeout": timedelta(minutes=5),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
        non_retryable_error_types=["InvalidEvent"],
    ),
}
"""Publishing an outbound event: retried for up to five minutes, then the run carries on with a warning."""

PUBLISH_LOCAL: dict[str, Any] = {
    **PUBLISH,
    "local_retry_threshold": timedelta(seconds=5),
}
"""The same, as a local activity: a backoff longer than 5 s waits on a server timer rather than holding the
workflow task open."""
