"""The Prometheus endpoint: every module defines the metrics it updates; this serves them all, with the
activities' failures counted by one worker interceptor."""

from __future__ import annotations

import logging
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, start_http_server
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

ACTIVITY_FAILURES = Counter(
    "quantum_activity_failures_total",
    "Activity attempts that failed, by activity and error type (an ApplicationError's type, else the exception's)",
    ["activity", "error_type"],
)

log = logging.getLogger(__name__)


class MetricsError(RuntimeError):
    pass


def serve_metrics(port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Serve ``/metrics`` on ``host:port``; a taken port is a clear error."""
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as err:
        raise MetricsError(
            f"cannot serve metrics on {host}:{port}: {err.strerror}; set QUANTUM_METRICS_PORT to a free port"
        ) from None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server


class ActivityMetricsInterceptor(Interceptor):
    """Counts every failed activity attempt (a cancellation is not a failure)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:  # noqa: A002
        return _CountingFailures(next)


class _CountingFailures(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:  # noqa: A002
        try:
            return await super().execute_activity(input)
        except Exception as err:
            if not activity.is_cancelled():
                kind = err.type if isinstance(err, ApplicationError) and err.type else type(err).__name__
                ACTIVITY_FAILURES.labels(activity.info().activity_type, kind[:80]).inc()
            raise
