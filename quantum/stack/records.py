"""Run records: ``<data>/run/<name>.json`` names each server a stack started, so that the next stack can find it.

A record holds the server's :class:`ProcessIdentity` (pid and start time), its command line, the address it serves
and the identity of the stack process that owns it. A record is acted on only while the very process it names runs
(same pid, same start time, same command line): a pid the kernel has since given to another process is never
signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from pydantic import BaseModel, ValidationError

from agents.processes import ProcessIdentity

log = logging.getLogger(__name__)

RUN_DIR = "run"
"""The directory of the data directory that holds the records."""
_STOP_POLL_SECONDS = 0.1
_KILLED_GRACE_SECONDS = 10.0


class RunRecord(BaseModel):
    """A server a stack started: what it is, who owns it, where it serves.

    Attributes:
        name: The server, as the stack names it (``temporal``, ``nats``).
        process: The server process.
        owner: The stack process that owns it (stops it on exit).
        argv: Its command line, as started.
        address: What it serves: ``host:port`` for Temporal, ``nats://host:port`` for NATS.
        ui_url: Temporal's Web UI, when it serves one.
    """

    name: str
    process: ProcessIdentity
    owner: ProcessIdentity
    argv: list[str]
    address: str
    ui_url: str | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def running(self) -> bool:
        """The very process recorded still runs: same pid, start time and command line (a zombie does not count)."""
        return self.process.alive() and command_line(self.process.pid) == self.argv


def record_path(data_dir: Path, name: str) -> Path:
    """Where the record of server ``name`` of the stack on ``data_dir`` lives."""
    return data_dir / RUN_DIR / f"{name}.json"


def command_line(pid: int) -> list[str] | None:
    """The arguments ``pid`` runs with; None when there is no such process or it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="surrogateescape") for part in raw.split(b"\0")[:-1]]


def read_record(path: Path) -> RunRecord | None:
    """The record at ``path``; None when there is none. One that cannot be parsed is removed (it names nothing)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return RunRecord.model_validate_json(text)
    except ValidationError:
        log.warning("removing %s: it is not a run record", path)
        path.unlink(missing_ok=True)
        return None


def write_record(path: Path, record: RunRecord, *, exclusive: bool = False) -> bool:
    """Write ``record`` to ``path`` atomically (a reader sees the old record or the new one, never half of one).

    Args:
        path: Where the record lives.
        record: The record.
        exclusive: Write only if there is no record yet (another stack starting on this data directory at the same
            moment keeps its own).

    Returns:
        Whether it was written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(record.model_dump_json(indent=2) + "\n")
    try:
        if not exclusive:
            os.replace(partial, path)
            return True
        try:
            os.link(partial, path)
        except FileExistsError:
            log.warning("%s exists already: %s (pid %d) is not recorded", path, record.name, record.pid)
            return False
        return True
    finally:
        partial.unlink(missing_ok=True)


def remove_record(path: Path, process: ProcessIdentity | None) -> None:
    """Remove the record at ``path`` if it names ``process`` (a record written since by another stack stays)."""
    record = read_record(path)
    if record is not None and record.process == process:
        path.unlink(missing_ok=True)


def signal_recorded(record: RunRecord, sig: int) -> bool:
    """Send ``sig`` to the recorded process (its whole group when it leads one), only if it is that very process.

    A SIGTERM is followed by a SIGCONT, so that a stopped process acts on it.

    Returns:
        Whether the process was there to signal.
    """
    if not record.running():
        return False
    pid = record.process.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send = os.killpg if os.getpgid(pid) == pid else os.kill
        send(pid, sig)
        if sig == signal.SIGTERM:
            send(pid, signal.SIGCONT)
    return True


async def stop_recorded(record: RunRecord, timeout: float) -> bool:
    """SIGTERM the recorded process, wait until it is gone, SIGKILL it after ``timeout`` seconds.

    It is not this process's child, so its end is seen by polling its identity. A cancellation kills it at once.

    Returns:
        Whether it is gone (False only when even SIGKILL did not end it within a grace period).
    """
    if not signal_recorded(record, signal.SIGTERM):
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    killed = False
    try:
        while record.running():
            if loop.time() >= deadline:
                if killed:
                    log.error("%s (pid %d) survives SIGKILL", record.name, record.pid)
                    return False
                log.warning("%s (pid %d) ignored SIGTERM for %g s; killing it", record.name, record.pid, timeout)
                signal_recorded(record, signal.SIGKILL)
                killed = True
                deadline = loop.time() + _KILLED_GRACE_SECONDS
            await asyncio.sleep(_STOP_POLL_SECONDS)
    except asyncio.CancelledError:
        signal_recorded(record, signal.SIGKILL)
        raise
    return True


class AdoptedServer:
    """A server an earlier stack started and left running, now owned by this stack: stopped when it exits.

    Args:
        record: The server's record, naming this stack as its owner.
        path: Where the record lives.
    """

    def __init__(self, record: RunRecord, path: Path) -> None:
        self.record = record
        self.path = path

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self.record.pid if self.record.running() else None

    async def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; the record goes with it. Safe to call again."""
        if await stop_recorded(self.record, timeout):
            remove_record(self.path, self.record.process)
