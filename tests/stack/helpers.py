"""Looking at processes through ``/proc``, and running ``quantum up`` as a program, for the stack's tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from tests.conftest import free_port

QUANTUM = Path(sys.executable).parent / "quantum"
DEADLINE = 90.0
"""Seconds a polling loop waits for something that takes a second or two (a generous bound, not a measurement)."""


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def status(pid: int) -> str | None:
    """The process's state letter (``R``, ``S``, ``Z``...), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def alive(pid: int) -> bool:
    return status(pid) not in {None, "Z", "X"}


def start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def processes_mentioning(text: str) -> list[int]:
    """Live processes (zombies excluded) with ``text`` in an argument, this test process excluded."""
    me = os.getpid()
    return sorted(pid for pid in pids() if pid != me and alive(pid) and any(text in arg for arg in cmdline(pid)))


def describe(pid: int) -> str:
    """A process for a failure message: pid, state, parent and command line."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        state, parent = stat[0], stat[1]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return f"{pid} (gone)"
    return f"{pid} state {state} parent {parent}: {' '.join(cmdline(pid))[:300]}"


def wait_gone(text: str, what: str, deadline: float = DEADLINE) -> None:
    """Wait until no process mentions ``text``; fail naming ``what`` and every process still there."""
    end = time.monotonic() + deadline
    while left := processes_mentioning(text):
        if time.monotonic() >= end:
            raise AssertionError(f"still waiting for: {what}; still running:\n" + "\n".join(map(describe, left)))
        time.sleep(0.2)


def session_members(sessions: list[int]) -> list[int]:
    """Live processes whose session is one of ``sessions`` (each server leads a session of its own)."""
    members = []
    for pid in pids():
        try:
            if os.getsid(pid) in sessions and alive(pid):
                members.append(pid)
        except ProcessLookupError:
            pass
    return sorted(members)


def environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def wait_until(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after a generous deadline."""
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"still waiting for: {what}"
        time.sleep(0.2)


def dead_identity() -> tuple[int, int]:
    """Pid and start time of a process that has exited (an owner that is gone)."""
    proc = subprocess.Popen(["sleep", "60"])
    start = start_ticks(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


def up_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``quantum up`` on free ports with its own data directory."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUANTUM_")}
    env.update(
        QUANTUM_DATA_DIR=str(data_dir),
        QUANTUM_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        QUANTUM_TEMPORAL_UI_PORT=str(free_port()),
        QUANTUM_NATS_URL=f"nats://127.0.0.1:{free_port()}",
        QUANTUM_METRICS_PORT=str(free_port()),
        QUANTUM_PROMETHEUS_PORT=str(free_port()),
        COLUMNS="200",
    )
    env.update(extra)
    return env


class Up:
    """``quantum up`` as a program, its output in a file; started and waited for until it says it is up."""

    started: ClassVar[list[Up]] = []
    """Every one started, for a test's teardown to kill what a failure left running."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str = "up") -> None:
        self.log = workdir / f"{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [str(QUANTUM), "up"], env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT
            )
        Up.started.append(self)
        wait_until(self._is_up, f"quantum up to be up; its output:\n{self.output}")

    @property
    def output(self) -> str:
        return self.log.read_text()

    def _is_up(self) -> bool:
        assert self.proc.poll() is None, f"quantum up exited with {self.proc.returncode}:\n{self.output}"
        return "Press Ctrl-C" in self.output

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """The clean stop: SIGTERM (or Ctrl-C's SIGINT), then its exit status."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=DEADLINE)

    def kill(self) -> None:
        """``kill -9``: no chance to stop anything."""
        self.proc.kill()
        self.proc.wait()
