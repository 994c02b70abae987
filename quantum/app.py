"""Running the product: the embedded stack, the worker and the metrics endpoint, stopped cleanly on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from temporalio.client import Client

from quantum.client import connect
from quantum.metrics import serve_metrics
from quantum.settings import Settings
from quantum.stack import EmbeddedStack
from quantum.worker import Agents, build_agents, new_worker

log = logging.getLogger(__name__)


@dataclass
class Running:
    """What ``running()`` brought up: where each part is and the connected client."""

    stack: EmbeddedStack
    client: Client
    agents: Agents
    metrics_url: str | None


@asynccontextmanager
async def running(
    settings: Settings, *, with_worker: bool = True, with_metrics: bool = True, say: Callable[[str], None] | None = None
) -> AsyncIterator[Running]:
    """Bring up the stack (starting embedded servers where needed), the worker and the metrics endpoint.

    Everything started here is stopped on exit, in reverse order, whatever ended the body.
    """
    async with AsyncExitStack() as exits:
        stack = await exits.enter_async_context(EmbeddedStack(settings, console_log=say))
        client = await connect(settings, address=stack.temporal_address)
        agents = build_agents(settings, nats_url=stack.nats_url)
        exits.callback(agents.close)
        metrics_url = None
        if with_metrics:
            server = serve_metrics(settings.metrics_port)
            exits.callback(server.shutdown)
            metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        if with_worker:
            worker = new_worker(client, agents.activities(), task_queue=settings.task_queue)
            await exits.enter_async_context(worker)
        yield Running(stack=stack, client=client, agents=agents, metrics_url=metrics_url)


async def wait_for_stop_signal() -> None:
    """Return on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
