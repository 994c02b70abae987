"""Running the product: the embedded stack, the worker and the metrics endpoint, stopped cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from temporalio.client import Client

from agents.reviewers import load_public_keys
from events.bridge import Bridge
from events.streams import ensure_streams
from quantum.client import connect
from quantum.metrics import MetricsError, serve_metrics
from quantum.settings import Settings
from quantum.stack import EmbeddedStack
from quantum.stack.probes import join_host_port
from quantum.stack.prometheus import ProcessTarget, reload_when_rules_change
from quantum.telemetry import telemetry
from quantum.worker import Agents, build_agents, new_worker

log = logging.getLogger(__name__)

BRIDGE_DRAIN_SECONDS = 20.0


@dataclass
class Running:
    """What ``running()`` brought up: where each part is and the connected clients."""

    stack: EmbeddedStack
    client: Client
    nc: NATS
    agents: Agents
    metrics_url: str | None


async def connect_nats(url: str, credentials: str | None = None) -> NATS:
    """Connect to NATS (a comma-separated URL list is a cluster; ``credentials``: a ``.creds`` file)."""
    return await nats.connect(
        servers=[s.strip() for s in url.split(",")],
        connect_timeout=5,
        max_reconnect_attempts=-1,
        user_credentials=credentials,
    )


@asynccontextmanager
async def bridge_running(nc: NATS, client: Client, settings: Settings) -> AsyncIterator[Bridge]:
    """Run the inbound bridge in the background; stop it cleanly on exit: no new fetch, the batch in hand finished
    and acknowledged (up to :data:`BRIDGE_DRAIN_SECONDS`, then cancelled: those messages are delivered again)."""
    keys = load_public_keys(settings.reviewer_keys) if settings.reviewer_keys is not None else None
    bridge = Bridge(
        nc,
        client,
        settings.bridge_config(),
        reviewer_keys=keys,
        max_review_validity_seconds=settings.review_max_validity_seconds,
    )
    stop = asyncio.Event()
    await bridge.ensure_consumer()
    task = asyncio.create_task(bridge.run(stop), name="quantum-bridge")
    try:
        yield bridge
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), BRIDGE_DRAIN_SECONDS)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.contextmanager
def metrics_served(
    settings: Settings, job: str, *, optional: bool = False, say: Callable[[str], None] | None = None
) -> Iterator[str | None]:
    """Serve this process's ``/metrics`` and make it a target of the stack's Prometheus while it runs; yields its
    URL (None when ``optional`` and the port is taken)."""
    try:
        server = serve_metrics(settings.metrics_port, settings.metrics_host)
    except MetricsError as err:
        if not optional:
            raise
        (say or log.info)(f"metrics not served: {err}")
        yield None
        return
    try:
        here = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "::", "") else settings.metrics_host
        with ProcessTarget(settings.data_path, job, join_host_port(here, settings.metrics_port)):
            yield f"http://{join_host_port(here, settings.metrics_port)}/metrics"
    finally:
        server.shutdown()


@asynccontextmanager
async def running(
    settings: Settings,
    *,
    with_worker: bool = True,
    with_bridge: bool = True,
    with_metrics: bool = True,
    metrics_optional: bool = False,
    say: Callable[[str], None] | None = None,
) -> AsyncIterator[Running]:
    """Bring up the stack (embedded servers where needed), the streams, the worker, the bridge and metrics.

    Everything started here is stopped on exit, in reverse order, whatever ended the body. With
    ``metrics_optional``, a metrics port in use is said and the rest runs without the endpoint.
    """
    async with AsyncExitStack() as exits:
        stack = await exits.enter_async_context(EmbeddedStack(settings, console_log=say))
        runtime = telemetry().runtime if with_metrics else None
        client = await connect(settings, address=stack.temporal_address, runtime=runtime)
        nc = await connect_nats(stack.nats_url, settings.nats_credentials)
        exits.push_async_callback(nc.close)
        await ensure_streams(nc.jetstream(), settings.stream_limits())
        agents = build_agents(settings, nats_url=stack.nats_url)
        exits.push_async_callback(agents.close)
        metrics_url = None
        if with_metrics:
            job = "quantum-worker" if with_worker else "quantum-bridge"
            metrics_url = exits.enter_context(metrics_served(settings, job, optional=metrics_optional, say=say))
        if with_worker:
            for run_id, action in agents.deploy.restore():
                (say or log.info)(f"release of {run_id}: {action}")
            worker = new_worker(client, agents.activities(), task_queue=settings.task_queue)
            await exits.enter_async_context(worker)
        if with_bridge:
            await exits.enter_async_context(bridge_running(nc, client, settings))
        if stack.prometheus_url:
            watcher = asyncio.create_task(reload_when_rules_change(stack.prometheus_url, settings.data_path))
            exits.callback(watcher.cancel)
        yield Running(stack=stack, client=client, nc=nc, agents=agents, metrics_url=metrics_url)


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
