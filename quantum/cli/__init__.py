"""The ``quantum`` command line: ``app`` (typer) and ``main`` (the console entry point).

One module per concern adds its commands: ``pipeline`` (request, status, list, cancel), ``review``, ``bus`` (events,
dead letters), ``stack`` (up, demo, bridge), ``evaluate`` (eval), ``bench`` and ``deployments`` (list, stop);
``entry`` turns every ending into an exit code.
"""

from quantum.cli import bench, bus, deployments, evaluate, pipeline, review, stack
from quantum.cli.apps import app
from quantum.cli.entry import main

__all__ = ["app", "bench", "bus", "deployments", "evaluate", "main", "pipeline", "review", "stack"]
