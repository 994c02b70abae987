"""Child processes: started with a clean environment, dying with their owner, read with bounds, known by identity.

Every process the product starts goes through here (the sandbox, scanners, release servers, the embedded servers):

* :func:`child_env` gives it a minimal environment (``PATH``, locale, time zone and what the caller adds), so the
  worker's secrets (model keys, Temporal API keys, NATS credentials) never reach a child.
* :func:`die_with_parent` arranges (``PR_SET_PDEATHSIG``) that it is signalled when the process that started it
  dies, even by ``kill -9``; started from the event loop's thread, that is when the owner dies.
* :func:`run_bounded` runs a command to completion with a timeout, keeps at most a bounded share of its output,
  and kills its whole process group when it times out or the caller is cancelled.
* :class:`ProcessIdentity` names a process by pid *and* start time, so a recorded pid that the kernel has since
  given to another process is never signalled by mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

KEPT_VARIABLES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
"""The only variables of the worker's environment a child inherits."""
DEFAULT_OUTPUT_BYTES = 256 * 1024
_PR_SET_PDEATHSIG = 1
_CHUNK = 64 * 1024

_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name, use_errno=True) if _libc_name else None


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: ``PATH``, locale and time zone from this process, then ``extra``."""
    env = {key: os.environ[key] for key in KEPT_VARIABLES if key in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(extra or {})
    return env


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies (None where that is unavailable).

    The parent is the thread that forks: call the spawning function from the event loop's thread, not from a pool.
    """
    if _libc is None:
        return None
    libc = _libc
    parent = os.getpid()

    def arrange() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return arrange


class ProcessIdentity(BaseModel):
    """A process as pid and start time (clock ticks since boot): a reused pid is a different process."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        start = start_time(pid)
        return cls(pid=pid, start=start) if start is not None else None

    def alive(self) -> bool:
        """This very process still runs (not a zombie, not another process under the same pid)."""
        fields = _stat_fields(self.pid)
        return fields is not None and _start(fields) == self.start and fields[0] not in {"Z", "X"}


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) is in parentheses and may hold spaces and ')': split after the last one
    return text.rsplit(")", 1)[1].split()


def _start(fields: list[str]) -> int | None:
    """The start time (clock ticks since boot) among the fields of ``/proc/<pid>/stat`` after the command name."""
    return int(fields[19]) if len(fields) > 19 else None


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when there is no such process."""
    fields = _stat_fields(pid)
    return _start(fields) if fields else None


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``; gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass(frozen=True)
class Completed:
    """A finished child: its status and bounded output (``*_truncated`` says whether some was dropped)."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False


async def _drain(stream: asyncio.StreamReader | None, limit: int, *, keep_tail: bool) -> tuple[bytes, bool]:
    """Read ``stream`` to its end, keeping at most ``limit`` bytes (the first, or the last with ``keep_tail``)."""
    if stream is None:
        return b"", False
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(_CHUNK):
        if keep_tail:
            kept += chunk
            if len(kept) > limit:
                del kept[: len(kept) - limit]
                truncated = True
        else:
            room = max(0, limit - len(kept))
            kept += chunk[:room]
            truncated = truncated or len(chunk) > room
    return bytes(kept), truncated


GROUP_GUARD = ("/bin/sh", "-c", 'trap "kill -KILL 0" TERM; "$@" & wait "$!"', "group-guard")
"""A shell that runs the command in the background and, told that its owner died (SIGTERM, its parent-death signal),
kills its whole process group. A parent-death signal reaches only the child that armed it: bwrap's sandbox init,
caught in its start-up when its parent is killed, never arms its own and waits for ever; in the group, it dies too."""


async def run_bounded(
    argv: list[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    max_output: int = DEFAULT_OUTPUT_BYTES,
    keep_tail: bool = False,
    guard_group: bool = False,
) -> Completed:
    """Run ``argv`` in a session of its own with a clean environment; kill its group on timeout or cancellation.

    Args:
        argv: The command.
        timeout: Wall-clock seconds before the whole process group is killed (``timed_out`` is then True).
        env: The child's whole environment (default :func:`child_env`).
        cwd: Its working directory.
        max_output: Bytes kept of each of stdout and stderr; the rest is read and dropped.
        keep_tail: Keep the last ``max_output`` bytes instead of the first.
        guard_group: Run it under :data:`GROUP_GUARD`, so that everything of its group dies with this process, not
            only the child itself (a process killed by a signal then exits with 128 + the signal's number).
    """
    if guard_group:
        argv = [*GROUP_GUARD, *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd) if cwd else None,
        env=dict(env) if env is not None else child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=die_with_parent(signal.SIGTERM if guard_group else signal.SIGKILL),
    )
    reading = asyncio.gather(
        _drain(proc.stdout, max_output, keep_tail=keep_tail), _drain(proc.stderr, max_output, keep_tail=keep_tail)
    )
    timed_out = False
    try:
        (out, out_cut), (err, err_cut) = await asyncio.wait_for(asyncio.shield(reading), timeout)
        await proc.wait()
    except TimeoutError:
        timed_out = True
        signal_group(proc.pid, signal.SIGKILL)
        try:  # a descendant that left the group may still hold the pipes: do not wait on it for ever
            (out, out_cut), (err, err_cut) = await asyncio.wait_for(reading, 10)
        except TimeoutError:
            (out, out_cut), (err, err_cut) = (b"", True), (b"", True)
        await proc.wait()
    except asyncio.CancelledError:
        signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(reading, proc.wait(), return_exceptions=True), 10)
        raise
    return Completed(
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out,
        stderr=err,
        timed_out=timed_out,
        stdout_truncated=out_cut,
        stderr_truncated=err_cut,
    )
