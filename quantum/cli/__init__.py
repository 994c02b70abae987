"""The ``quantum`` command line: ``app`` (typer) and ``main`` (the console entry point).

One module per concern adds its commands: ``pipeline`` (request, status, list, cancel), ``review``, ``bus`` (events,
dead letters), ``stack`` (up, demo, bridge), ``evaluate`` (eval), ``bench`` and ``deployments`` (list, stop);
``bench_chaos`` (bench chaos), ``audit`` (verify), ``pending`` (reviews pending), ``codec`` (codec-server); ``entry``
turns every ending into an exit code.
"""

from quantum.cli import audit, bench, bench_chaos, bus, codec, deployments, evaluate, pending, pipeline, review, stack
from quantum.cli.apps import app
from quantum.cli.entry import main

__all__ = [
    "app",
    "audit",
    "bench",
    "bench_chaos",
    "bus",
    "codec",
    "deployments",
    "evaluate",
    "main",
    "pending",
    "pipeline",
    "review",
    "stack",
]
