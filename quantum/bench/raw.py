"""The saga benchmark's baseline: a workflow that runs the agents' activities one after another, with no saga logic
and no events, and the worker process that serves it with no-op activities.

It imports nothing of the product, only the SDK and the standard library, so that the baseline is Temporal's own
cost, and its worker's footprint is the SDK's own.

    python -m quantum.bench.raw --temporal HOST:PORT --task-queue QUEUE --activities a,b,c [--results FILE]

It runs the same activities as the product with the same data: each is called with the input the real run gave it,
and returns what the real run returned (``--results``), so both sides move the same payloads and the difference is
the orchestration's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.service import TLSConfig
from temporalio.worker import Worker

RAW_WORKFLOW = "BenchAgentsWorkflow"
READY = "bench worker ready"
"""The line a bench worker prints once it polls its task queue."""


@workflow.defn(name=RAW_WORKFLOW)
class AgentsOnly:
    """Runs each named activity in turn, as the saga would, and nothing else."""

    @workflow.run
    async def run(self, calls: list[tuple[str, Any]]) -> int:
        """``calls``: each activity's name and its input (None: called without one)."""
        for name, arg in calls:
            args = [] if arg is None else [arg]
            await workflow.execute_activity(name, args=args, start_to_close_timeout=timedelta(seconds=60))
        return len(calls)


def noop(name: str, result: Any = None) -> Callable[..., Any]:
    """An activity named ``name`` that does nothing and returns ``result``."""

    async def run(_arg: Any = None) -> Any:
        return result

    run.__name__ = run.__qualname__ = f"noop_{name.replace('.', '_')}"
    return activity.defn(name=name)(run)


async def serve(worker: Worker) -> None:
    """Run ``worker`` until SIGTERM or SIGINT; say when it polls."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print(READY, flush=True)
        await stop.wait()


def arguments(argv: Sequence[str] | None, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--temporal", required=True, help="The Temporal frontend, HOST:PORT.")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument(
        "--settings-stdin",
        action="store_true",
        help="Read the cluster's connection settings (JSON, secrets included) from standard input.",
    )
    return parser


def stdin_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """The connection settings given on standard input (``--settings-stdin``), else None."""
    return json.loads(sys.stdin.read()) if args.settings_stdin else None


async def connect_raw(args: argparse.Namespace) -> Client:
    """The SDK's client, to the embedded stack the command line names or the cluster the settings on standard input
    name (TLS, client certificate and API key as given; the baseline encrypts no payloads)."""
    given = stdin_settings(args)
    if given is None:
        return await Client.connect(args.temporal, namespace=args.namespace)

    def read(key: str) -> bytes | None:
        path = given.get(key)
        return Path(path).read_bytes() if path else None

    files = {k: read(k) for k in ("temporal_tls_cert", "temporal_tls_key", "temporal_tls_ca")}
    tls: TLSConfig | bool = bool(given.get("temporal_tls") or given.get("temporal_api_key"))
    if any(files.values()):
        tls = TLSConfig(
            client_cert=files["temporal_tls_cert"],
            client_private_key=files["temporal_tls_key"],
            server_root_ca_cert=files["temporal_tls_ca"],
        )
    return await Client.connect(
        given["temporal_address"], namespace=given["temporal_namespace"], tls=tls, api_key=given.get("temporal_api_key")
    )


async def main(argv: Sequence[str] | None = None) -> None:
    parser = arguments(argv, "A worker for the saga benchmark's raw workflow, with no-op activities.")
    parser.add_argument("--activities", required=True, help="The activity names, comma-separated.")
    parser.add_argument("--results", type=Path, help="What each activity returns (JSON: results by name).")
    args = parser.parse_args(argv)
    client = await connect_raw(args)
    names = [n for n in args.activities.split(",") if n]
    results = json.loads(args.results.read_text())["results"] if args.results else {}
    activities = [noop(n, results.get(n)) for n in dict.fromkeys(names)]
    worker = Worker(client, task_queue=args.task_queue, workflows=[AgentsOnly], activities=activities)
    await serve(worker)


if __name__ == "__main__":
    asyncio.run(main())
