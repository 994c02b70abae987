"""The servers a benchmark runs on, the processes it starts beside them, and how much memory each holds."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from temporalio.client import Client

from events.streams import ensure_streams
from quantum.app import connect_nats
from quantum.bench.raw import READY
from quantum.client import connect
from quantum.settings import Settings
from quantum.stack import EmbeddedStack, loopback_settings
from quantum.stack.process import ServerProcess


@dataclass
class BenchStack:
    """Temporal and NATS for one benchmark, with clients, and the processes to watch (name to pid)."""

    settings: Settings
    client: Client
    nc: NATS
    temporal_address: str
    nats_url: str
    data: Path
    pids: dict[str, int] = field(default_factory=dict)
    """The servers' processes, when they run on this machine (the embedded stack)."""
    keyless_client: Client | None = None
    """On a cluster with payload keys: a client that encrypts nothing, for the SDK-only baseline."""
    worker_settings: bytes | None = None
    """On a cluster: how a bench worker process reaches it, secrets included, for the worker's standard input
    (:func:`worker_settings`); None on the embedded stack, which the command line names."""

    @property
    def baseline_client(self) -> Client:
        """The client the SDK-only baseline's runs start with: it encrypts no payloads, as its worker reads none."""
        return self.keyless_client or self.client

    @property
    def on_cluster(self) -> bool:
        return self.worker_settings is not None


WORKER_SETTINGS = (
    "temporal_address",
    "temporal_namespace",
    "temporal_api_key",
    "temporal_tls",
    "temporal_tls_cert",
    "temporal_tls_key",
    "temporal_tls_ca",
    "codec_keys",
    "codec_keys_file",
    "codec_key_id",
)


def on(cluster: Settings | None) -> str:
    """Where a suite runs, for its report: the embedded stack, or the cluster's Temporal frontend and namespace."""
    return "embedded stack" if cluster is None else f"{cluster.temporal_address} ({cluster.temporal_namespace})"


def worker_settings(settings: Settings) -> bytes:
    """The settings a bench worker needs to reach the cluster as the benchmark does (its API key and payload keys
    among them), as JSON for its standard input: never on its command line or in its environment."""
    data = settings.model_dump(include=set(WORKER_SETTINGS), mode="json")
    for name in ("temporal_api_key", "codec_keys"):
        secret = getattr(settings, name)
        data[name] = secret.get_secret_value() if secret is not None else None
    return json.dumps(data).encode()


@asynccontextmanager
async def bench_stack(cluster: Settings | None = None, **overrides: Any) -> AsyncIterator[BenchStack]:
    """A fresh embedded stack (temporary data directory, free ports) with connected clients and its streams; or,
    with ``cluster``, the Temporal and NATS those settings name (their TLS, credentials and payload keys)."""
    if cluster is not None:
        async with _on_cluster(cluster, **overrides) as bench:
            yield bench
        return
    with tempfile.TemporaryDirectory(prefix="quantum-bench-") as tmp:
        settings = loopback_settings(Path(tmp), **overrides)
        async with EmbeddedStack(settings) as stack:
            pids = {"temporal dev server": stack.pids["temporal"], "nats-server": stack.pids["nats"]}
            async with _connected(settings, stack.temporal_address, stack.nats_url, pids=pids) as bench:
                yield bench


@asynccontextmanager
async def _on_cluster(cluster: Settings, **overrides: Any) -> AsyncIterator[BenchStack]:
    with tempfile.TemporaryDirectory(prefix="quantum-bench-") as tmp:
        settings = _copy(cluster, data_dir=Path(tmp), **overrides)
        keyless_client = None
        if settings.codec_keyring() is not None:
            keyless_client = await connect(_copy(settings, codec_keys=None, codec_keys_file=None))
        async with _connected(
            settings,
            settings.temporal_address,
            settings.nats_url,
            keyless_client=keyless_client,
            worker_settings=worker_settings(settings),
        ) as bench:
            yield bench


def _copy(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with ``changes``, validated afresh (``model_copy`` would keep what the original cached, such
    as its data directory)."""
    return type(settings).model_validate({**settings.model_dump(), **changes})


@asynccontextmanager
async def _connected(
    settings: Settings, temporal_address: str, nats_url: str, **fields: Any
) -> AsyncIterator[BenchStack]:
    """Clients of the Temporal and NATS at these addresses, with the product's streams, for one benchmark."""
    client = await connect(settings, address=temporal_address)
    nc = await connect_nats(nats_url, settings.nats_credentials)
    try:
        await ensure_streams(nc.jetstream(), settings.stream_limits())
        yield BenchStack(
            settings=settings,
            client=client,
            nc=nc,
            temporal_address=temporal_address,
            nats_url=nats_url,
            data=settings.data_path,
            **fields,
        )
    finally:
        await nc.close()


@asynccontextmanager
async def bench_process(
    name: str,
    argv: list[str],
    logs: Path,
    *,
    ready_line: str = READY,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> AsyncIterator[ServerProcess]:
    """``argv`` as a child that dies with this process; ready once its output says ``ready_line``."""
    log_file = logs / f"{name.replace(' ', '-')}.log"
    process = ServerProcess(name, argv, log_file, env=env, stdin=stdin)

    async def ready() -> bool:
        await asyncio.sleep(0)
        try:
            return ready_line in log_file.read_text(errors="replace")
        except OSError:
            return False

    await process.start(ready, timeout=60)
    try:
        yield process
    finally:
        await process.stop()


def python_module(module: str, *args: str) -> list[str]:
    """The command line that runs ``module`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) process ``pid`` has used so far; 0 when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def memory_mb(pid: int) -> tuple[float, float]:
    """The resident memory of process ``pid`` now and at its peak (``VmRSS``, ``VmHWM``), in MB; 0 when gone."""
    now = peak = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return now, peak
