"""The saga benchmark's product worker: the real workflows, the real worker assembly (interceptors included), and
every agent activity (the event publisher's too) replaced by a no-op registered under its real name.

Each no-op returns what the real activity returned in a real run recorded at the start of the benchmark, so the
saga takes the path of a real successful run; an activity that run did not call refuses, naming itself.

    python -m quantum.bench.agents --temporal HOST:PORT --task-queue QUEUE --results FILE
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from quantum.bench.raw import arguments, noop, serve, stdin_settings
from quantum.client import connect
from quantum.settings import Settings
from quantum.worker import new_worker


def refusing(name: str) -> Callable[..., Any]:
    """An activity named ``name`` that the recorded run never called: it fails, naming itself."""

    async def run(_arg: Any = None) -> Any:
        raise ApplicationError(f"{name} was not called by the recorded run", type="NotRecorded", non_retryable=True)

    run.__name__ = run.__qualname__ = f"refusing_{name.replace('.', '_')}"
    return activity.defn(name=name)(run)


def noop_agents(recorded: dict[str, Any], names: Sequence[str]) -> list[Callable[..., Any]]:
    """A no-op for each of ``names``: the recorded result where there is one, else a refusal."""
    return [noop(name, recorded[name]) if name in recorded else refusing(name) for name in dict.fromkeys(names)]


async def main(argv: Sequence[str] | None = None) -> None:
    parser = arguments(argv, "A worker for the saga benchmark: the real workflows over no-op agents.")
    parser.add_argument("--results", required=True, type=Path, help="The recorded run's results (JSON).")
    args = parser.parse_args(argv)
    record = json.loads(args.results.read_text())
    given = stdin_settings(args)
    if given is None:
        client = await Client.connect(args.temporal, namespace=args.namespace, data_converter=pydantic_data_converter)
    else:  # the cluster's, with its payload keys: the product's runs are encrypted as the product's would be
        client = await connect(Settings(**given, _env_file=None))
    worker = new_worker(client, noop_agents(record["results"], record["names"]), task_queue=args.task_queue)
    await serve(worker)


if __name__ == "__main__":
    asyncio.run(main())
