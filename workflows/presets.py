"""Timeout and retry presets for every activity the workflows run, in one place."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

from agents.errors import NON_RETRYABLE_TYPES

_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=list(NON_RETRYABLE_TYPES),
)

QUICK: dict[str, Any] = {"start_to_close_timeout": timedelta(seconds=60), "retry_policy": _RETRY}
"""File work in the workspace: generate, validate, fingerprint."""

TOOL: dict[str, Any] = {"start_to_close_timeout": timedelta(minutes=10), "retry_policy": _RETRY}
"""Running pytest or a scanner."""

INFRA: dict[str, Any] = {"start_to_close_timeout": timedelta(minutes=5), "retry_policy": _RETRY}
"""Provisioning and deploying."""

COMPENSATION: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=2),
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
