"""The Prometheus endpoint: every module defines the metrics it updates; this serves them all."""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

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
