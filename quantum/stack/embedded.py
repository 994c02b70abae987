"""The embedded stack: Temporal and NATS for this process, used where they answer, started (or adopted) where not."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from agents.errors import without_secrets
from agents.processes import ProcessIdentity
from quantum.settings import Settings, is_local_host
from quantum.stack.errors import StackError
from quantum.stack.probes import (
    bind_ip,
    free_port,
    join_host_port,
    nats_answers,
    nats_host_port,
    port_bindable,
    port_in_use,
    temporal_answers,
)
from quantum.stack.prometheus import (
    PrometheusServer,
    prometheus_ready,
    reload,
    temporal_metrics_address,
    write_config,
)
from quantum.stack.records import AdoptedServer, read_record, record_path, stop_recorded, write_record
from quantum.stack.servers import NatsServer, TemporalDevServer

log = logging.getLogger(__name__)


class _Owned(Protocol):
    """A server this stack stops on exit: one it started or one it adopted."""

    @property
    def pid(self) -> int | None: ...

    async def stop(self, timeout: float = 10) -> None: ...


class EmbeddedStack:
    """Temporal and NATS for this process: what answers at the configured addresses, or embedded servers.

    Use as an async context manager. On entry, for each service:

    1. If the data directory's run record names a server an earlier stack started that still runs (same pid *and*
       start time) and whose owner has exited: adopt it when it answers at the configured address (this stack now
       stops it on exit), else stop it. A record of a process that has exited is removed. A record whose owner still
       runs belongs to that running stack: its server is used if it answers, never stopped.
    2. Else use what answers at the configured address (never stopped: someone else's).
    3. Else, when the address is on this machine and its port is free, start the embedded server on exactly that
       address, and record it; else raise :class:`StackError` saying what is in the way.

    On exit, stop what was started or adopted, in reverse order, and remove the records.

    Attributes:
        temporal_address: The Temporal frontend to connect to.
        nats_url: The NATS URL (list) to connect to.
        temporal_ui_url: The embedded server's Web UI, when this stack started or adopted one with a UI.
        started: Names of the components this stack started (``temporal``, ``nats``).
        adopted: Names of the components this stack adopted from an earlier one that exited.
    """

    def __init__(self, settings: Settings, *, console_log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._say: Callable[[str], None] = console_log or (lambda line: log.info("%s", line))
        self.temporal_address: str = settings.temporal_address
        self.nats_url: str = settings.nats_url
        self.temporal_ui_url: str | None = None
        self.temporal_metrics: str | None = None
        """Where the Temporal dev server this stack started or adopted serves its own metrics."""
        self.prometheus_url: str | None = None
        self.notes: list[str] = []
        """What the stack chose not to start, and why (Prometheus not installed...)."""
        self.started: list[str] = []
        self.adopted: list[str] = []
        self.pids: dict[str, int] = {}
        """The process of each server this stack started (``temporal``, ``nats``)."""
        self._servers: list[_Owned] = []

    async def __aenter__(self) -> EmbeddedStack:
        try:
            await self._temporal()
            await self._nats()
            await self._prometheus()
        except BaseException:
            await self._stop_all()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop_all()

    async def _stop_all(self) -> None:
        """Stop every owned server, newest first; a cancellation kills the rest at once and is re-raised."""
        cancelled: asyncio.CancelledError | None = None
        while self._servers:
            server = self._servers.pop()
            try:
                await server.stop(timeout=0 if cancelled else 10)
            except asyncio.CancelledError as error:
                cancelled = error
            except Exception:
                log.exception("stopping %s failed", type(server).__name__)
        if cancelled is not None:
            raise cancelled

    async def _temporal(self) -> None:
        s = self.settings
        host, port = s.temporal_host_port
        api_key = s.temporal_api_key.get_secret_value() if s.temporal_api_key else None

        async def answers() -> bool:
            return await temporal_answers(s.temporal_address, tls=s.temporal_tls, api_key=api_key)

        what = "Temporal dev server"
        adopted = await self._take_over("temporal", what, join_host_port(bind_ip(host), port), answers)
        if adopted is not None:
            self.temporal_address = adopted.record.address
            self.temporal_ui_url = adopted.record.ui_url
            self.temporal_metrics = temporal_metrics_address(adopted.record.argv)
            return
        if await answers():
            self._say(f"using Temporal at {s.temporal_address}")
            return
        self._check_can_start("Temporal", host, port, "QUANTUM_TEMPORAL_ADDRESS")
        ui_port = s.temporal_ui_port or port + 1000
        if not port_bindable(bind_ip(host), ui_port):
            raise StackError(
                f"the Temporal Web UI port {join_host_port(host, ui_port)} is in use; stop what holds it or set "
                "QUANTUM_TEMPORAL_UI_PORT"
            )
        data = s.data_path
        server = TemporalDevServer(
            host=host,
            port=port,
            ui_port=ui_port,
            db_file=data / "temporal" / "temporal.db",
            log_file=data / "logs" / "temporal.log",
            namespace=s.temporal_namespace,
            record_file=record_path(data, "temporal"),
        )
        self._servers.append(server)
        await server.start()
        if server.pid is not None:
            self.pids["temporal"] = server.pid
        self.temporal_address = server.address
        self.temporal_ui_url = server.ui_url
        self.temporal_metrics = server.metrics_address
        self.started.append("temporal")
        self._say(f"started {what} on {server.address} (Web UI {server.ui_url}, data {data})")

    async def _nats(self) -> None:
        s = self.settings
        host, port = nats_host_port(s.nats_url)

        async def answers() -> bool:
            return await nats_answers(s.nats_url)

        address = f"nats://{join_host_port(bind_ip(host), port)}"
        adopted = await self._take_over("nats", "nats-server", address, answers)
        if adopted is not None:
            self.nats_url = adopted.record.address
            return
        if await answers():
            self._say(f"using NATS at {without_secrets(s.nats_url)}")
            return
        self._check_can_start("NATS", host, port, "QUANTUM_NATS_URL")
        data = s.data_path
        server = NatsServer(
            host=host,
            port=port,
            store_dir=data / "nats",
            log_file=data / "logs" / "nats.log",
            config_file=data / "nats" / "nats.conf",
            record_file=record_path(data, "nats"),
        )
        self._servers.append(server)
        await server.start()
        if server.pid is not None:
            self.pids["nats"] = server.pid
        self.nats_url = server.url
        self.started.append("nats")
        self._say(f"started nats-server with JetStream on {server.url} (store {data / 'nats'})")

    async def _prometheus(self) -> None:
        """Debian's prometheus for the stack, when installed and wanted; never a reason not to start."""
        s = self.settings
        if not s.prometheus:
            return
        data = s.data_path
        config = write_config(data, temporal_metrics=self.temporal_metrics)
        url = f"http://{join_host_port('127.0.0.1', s.prometheus_port)}"

        async def answers() -> bool:
            return await prometheus_ready(url)

        adopted = await self._take_over("prometheus", "Prometheus", url, answers)
        if adopted is not None:
            self.prometheus_url = url
            await reload(url)  # the configuration was written again: the Temporal target may have moved
            return
        binary = shutil.which(s.prometheus_bin)
        if binary is None:
            self.notes.append(
                f"Prometheus not started: {s.prometheus_bin!r} is not installed (Debian: apt-get install prometheus)"
            )
            return
        if await answers():
            self.notes.append(f"Prometheus not started: one already answers at {url} (its own configuration)")
            return
        if port_in_use("127.0.0.1", s.prometheus_port) or not port_bindable("127.0.0.1", s.prometheus_port):
            self.notes.append(
                f"Prometheus not started: 127.0.0.1:{s.prometheus_port} is in use; set QUANTUM_PROMETHEUS_PORT"
            )
            return
        server = PrometheusServer(
            binary=binary,
            host="127.0.0.1",
            port=s.prometheus_port,
            data=data,
            log_file=data / "logs" / "prometheus.log",
            record_file=record_path(data, "prometheus"),
        )
        self._servers.append(server)
        try:
            await server.start()
        except StackError as err:  # the product runs without it: say why
            self._servers.remove(server)
            self.notes.append(f"Prometheus did not start: {err}")
            return
        self.prometheus_url = server.url
        self.started.append("prometheus")
        self._say(f"started Prometheus on {server.url} (configuration {config})")

    async def _take_over(
        self, name: str, what: str, address: str, answers: Callable[[], Awaitable[bool]]
    ) -> AdoptedServer | None:
        """Act on the run record of server ``name``: adopt the server, stop it, or forget a stale record.

        Args:
            name: The record's name (``temporal``, ``nats``).
            what: The server, for messages.
            address: The configured address, as the server's record states it.
            answers: Whether something answers at the configured address.

        Returns:
            The adopted server (already owned by this stack), or None to go on as usual: use what answers, or start.

        Raises:
            StackError: The record belongs to a stack that still runs and its server does not answer here, or a
                server left by an earlier stack would not stop.
        """
        data = self.settings.data_path
        path = record_path(data, name)
        record = read_record(path)
        if record is None:
            return None
        if not record.running():
            path.unlink(missing_ok=True)
            self._say(f"removed a stale run record: {what} (pid {record.pid}) has exited")
            return None
        matches = record.address == address and await answers()
        gone = f"quantum process {record.owner.pid}, which has exited"
        if record.owner.alive():
            if matches:
                return None  # the server of a stack that still runs: used like anything that answers, not stopped
            raise StackError(
                f"{what} (pid {record.pid}) of a quantum process that still runs (pid {record.owner.pid}) uses the "
                f"data directory {data} but does not answer at {address}; stop that process or set QUANTUM_DATA_DIR"
            )
        if matches:
            me = ProcessIdentity.of(os.getpid())
            if me is not None:
                record = record.model_copy(update={"owner": me})
                write_record(path, record)
            adopted = AdoptedServer(record, path)
            self._servers.append(adopted)
            self.adopted.append(name)
            self._say(f"adopted {what} (pid {record.pid}) on {address}, left running by {gone}")
            return adopted
        self._say(f"stopping {what} (pid {record.pid}), left running by {gone}: it does not answer at {address}")
        if not await stop_recorded(record, timeout=10):
            raise StackError(f"{what} (pid {record.pid}) does not stop; end it, or set QUANTUM_DATA_DIR")
        path.unlink(missing_ok=True)
        return None

    @staticmethod
    def _check_can_start(what: str, host: str, port: int, variable: str) -> None:
        """Raise unless an embedded server may listen on ``host:port``."""
        address = join_host_port(host, port)
        if not is_local_host(host):
            raise StackError(
                f"{what} at {address} does not answer; check that it is up and reachable, or set {variable}"
            )
        ip = bind_ip(host)
        if port_in_use(ip, port) or not port_bindable(ip, port):
            raise StackError(f"{address} is in use by something that is not {what}; stop it or set {variable}")


OWN_STACK: dict[str, Any] = {
    "prometheus": False,
    "temporal_namespace": "default",
    "temporal_api_key": None,
    "temporal_tls": False,
    "temporal_tls_cert": None,
    "temporal_tls_key": None,
    "temporal_tls_ca": None,
    "nats_creds": None,
    "codec_keys": None,
    "codec_keys_file": None,
}
"""Settings of a stack of one's own that no environment variable may change: a cluster's credentials, TLS and payload
keys are not for it (nor for the processes started against it)."""


def loopback_settings(
    data_dir: Path, *, temporal_port: int | None = None, nats_port: int | None = None, **overrides: Any
) -> Settings:
    """Settings for a stack of one's own on loopback: ``data_dir``, free ports (unless given), none of
    :data:`OWN_STACK` taken from the environment, no ``.env`` file: what benchmarks and tests start their embedded
    stacks with."""
    return Settings(
        data_dir=data_dir,
        temporal_address=f"127.0.0.1:{temporal_port or free_port()}",
        temporal_ui_port=free_port(),
        nats_url=f"nats://127.0.0.1:{nats_port or free_port()}",
        _env_file=None,
        **{**OWN_STACK, **overrides},
    )


def process_env(
    settings: Settings, *, temporal_address: str, nats_url: str, metrics_port: int, **variables: str
) -> dict[str, str]:
    """The settings of a ``quantum`` process started against a stack of one's own, as its environment variables
    (on top of :func:`~agents.processes.child_env`; never a secret): where the servers are, its data directory and
    task queue, its metrics port, no Prometheus of its own, then ``variables``; and this process's ``PYTHONPATH``,
    when it runs from a source tree."""
    env = {
        "QUANTUM_DATA_DIR": str(settings.data_path),
        "QUANTUM_TEMPORAL_ADDRESS": temporal_address,
        "QUANTUM_TEMPORAL_NAMESPACE": settings.temporal_namespace,
        "QUANTUM_NATS_URL": nats_url,
        "QUANTUM_TASK_QUEUE": settings.task_queue,
        "QUANTUM_METRICS_PORT": str(metrics_port),
        "QUANTUM_PROMETHEUS": "false",
        **variables,
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env
