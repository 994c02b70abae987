"""The two embedded servers: ``temporal server start-dev`` and ``nats-server`` with JetStream."""

from __future__ import annotations

import contextlib
from pathlib import Path

import nats

from agents.processes import run_bounded
from quantum.stack.probes import bind_ip, free_port, join_host_port, nats_answers, temporal_answers
from quantum.stack.process import ServerProcess, find_binary

_OPERATOR_TIMEOUT = 10.0


class TemporalDevServer:
    """``temporal server start-dev``, by default on a SQLite file with WAL (crash-safe, 4-5x faster than the default).

    The server runs no processes of its own (the Web UI is served from the same process).

    Args:
        host: Host to serve on (``localhost`` binds 127.0.0.1).
        port: Frontend gRPC port.
        ui_port: Web UI port; None means ``port + 1000``.
        db_file: SQLite file that keeps runs across restarts; None keeps everything in memory.
        log_file: Where the server's output goes (appended).
        namespace: Namespace that must exist before the server counts as ready (created when not ``default``).
        headless: Run without the Web UI.
        record_file: Where to keep its run record while it runs (see :mod:`quantum.stack.records`); None keeps none.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ui_port: int | None,
        db_file: Path | None,
        log_file: Path,
        namespace: str = "default",
        headless: bool = False,
        record_file: Path | None = None,
    ) -> None:
        self.host = bind_ip(host)
        self.port = port
        self.ui_port = None if headless else (ui_port or port + 1000)
        self.namespace = namespace
        self.db_file = db_file
        self.binary = find_binary("temporal")
        argv = [str(self.binary), "server", "start-dev", "--ip", self.host, "--port", str(port)]
        self.metrics_port = free_port(self.host)
        argv += ["--http-port", str(free_port(self.host)), "--metrics-port", str(self.metrics_port)]
        argv += ["--log-level", "warn"]
        if namespace != "default":
            argv += ["--namespace", namespace]
        if db_file is not None:
            argv += ["--db-filename", str(db_file)]
            argv += ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]
        if headless:
            argv += ["--headless"]
        else:
            argv += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        self._process = ServerProcess(
            "Temporal dev server",
            argv,
            log_file,
            record_file=record_file,
            record_name="temporal",
            address=self.address,
            ui_url=self.ui_url,
        )

    @property
    def address(self) -> str:
        """``host:port`` of the frontend."""
        return join_host_port(self.host, self.port)

    @property
    def metrics_address(self) -> str:
        """``host:port`` of the server's own Prometheus metrics."""
        return join_host_port(self.host, self.metrics_port)

    @property
    def ui_url(self) -> str | None:
        """The Web UI, or None when headless."""
        return f"http://{join_host_port(self.host, self.ui_port)}" if self.ui_port else None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid

    async def start(self, timeout: float = 60) -> None:
        """Start the server and wait until the frontend answers and the namespace exists.

        Raises:
            StackError: It exited or was not ready in time; the message ends with its log.
        """
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
        await self._process.start(self._ready, timeout)

    async def _ready(self) -> bool:
        """The frontend answers and ``temporal operator namespace describe`` finds the namespace.

        The operator call runs like every child (clean environment, dying with this process, killed with its group
        on a timeout or a cancellation), so neither a secret nor a ``TEMPORAL_*`` variable of this process reaches it.
        """
        if not await temporal_answers(self.address):
            return False
        argv = [str(self.binary), "operator", "namespace", "describe", "-n", self.namespace, "--address", self.address]
        done = await run_bounded(argv, timeout=_OPERATOR_TIMEOUT, max_output=4096)
        return done.returncode == 0 and not done.timed_out

    async def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait up to ``timeout`` seconds (it takes 1-3 s), then SIGKILL. Safe to call more than once."""
        await self._process.stop(timeout)


class NatsServer:
    """``nats-server`` with JetStream on a file store that syncs every write (no acknowledged event lost).

    Args:
        host: Host to serve on (``localhost`` binds 127.0.0.1).
        port: Client port.
        store_dir: JetStream file store.
        log_file: Where the server's output goes (appended).
        config_file: The configuration file written before each start.
        record_file: Where to keep its run record while it runs (see :mod:`quantum.stack.records`); None keeps none.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        store_dir: Path,
        log_file: Path,
        config_file: Path,
        record_file: Path | None = None,
    ) -> None:
        self.host = bind_ip(host)
        self.port = port
        self.store_dir = store_dir
        self.config_file = config_file
        self._process = ServerProcess(
            "nats-server",
            [str(find_binary("nats-server")), "-c", str(config_file)],
            log_file,
            record_file=record_file,
            record_name="nats",
            address=self.url,
        )

    @property
    def url(self) -> str:
        """``nats://host:port``."""
        return f"nats://{join_host_port(self.host, self.port)}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid

    def _write_config(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            f"port: {self.port}\n"
            f"host: {_quote(self.host)}\n"
            f"jetstream {{\n  store_dir: {_quote(str(self.store_dir))}\n  sync_interval: always\n}}\n"
        )

    async def start(self, timeout: float = 30) -> None:
        """Write the configuration, start the server and wait until JetStream answers.

        Raises:
            StackError: It exited or was not ready in time; the message ends with its log.
        """
        self._write_config()
        await self._process.start(self._ready, timeout)

    async def _ready(self) -> bool:
        if not await nats_answers(self.url):
            return False
        try:
            nc = await nats.connect(self.url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
        except Exception:  # not accepting clients yet
            return False
        try:
            await nc.jetstream(timeout=2).account_info()
        except Exception:  # JetStream not ready yet
            return False
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        return True

    async def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Safe to call more than once."""
        await self._process.stop(timeout)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
