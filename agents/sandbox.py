"""The sandbox in which generated (untrusted) code runs.

bubblewrap when it is installed: every namespace unshared (no network), the system read-only, only the run's
workspace writable (mounted at ``/workspace``), a cleared environment, uid 65534, all capabilities dropped, and
``prlimit`` caps on memory, CPU time, processes, open files and file size. Without bubblewrap, ``unshare`` gives a
new user and network namespace with the same limits and a cleared environment, and the result says so. Generated
code is never run with plain exec. A wall-clock timeout kills the whole process group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SANDBOX_MOUNT = "/workspace"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 1024 * 1024 * 1024
    cpu_seconds: int = 120
    processes: int = 256
    open_files: int = 256
    file_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class SandboxResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    isolation: str


class SandboxUnavailable(RuntimeError):
    """Neither bubblewrap nor unshare can isolate code on this machine."""


class Sandbox:
    """Runs commands against a workspace under bubblewrap (or unshare), never plainly."""

    def __init__(self, *, limits: Limits | None = None, bwrap: str | None = None, unshare: str | None = None) -> None:
        self.limits = limits or Limits()
        self._bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
        self._unshare = unshare if unshare is not None else shutil.which("unshare")
        self._prlimit = shutil.which("prlimit")

    @property
    def isolation(self) -> str:
        if self._bwrap:
            return "bwrap"
        if self._unshare:
            return "unshare"
        raise SandboxUnavailable("install bubblewrap (Debian package 'bubblewrap') or util-linux 'unshare'")

    def _limits_argv(self) -> list[str]:
        if not self._prlimit:
            raise SandboxUnavailable("prlimit (util-linux) is needed to cap the sandbox's resources")
        lim = self.limits
        return [
            self._prlimit,
            f"--as={lim.memory_bytes}",
            f"--cpu={lim.cpu_seconds}",
            f"--nproc={lim.processes}",
            f"--nofile={lim.open_files}",
            f"--fsize={lim.file_bytes}",
            "--",
        ]

    def _bwrap_argv(self, workspace: Path, env: dict[str, str]) -> list[str]:
        argv = [
            self._bwrap or "bwrap",
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--clearenv",
        ]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        # mounts apply in order: the fresh /tmp first, so an interpreter or venv under /tmp is still bound
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for path in ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/etc/alternatives", "/etc/ssl"):
            argv += ["--ro-bind-try", path, path]
        for prefix in sorted({sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parents[1])}):
            argv += ["--ro-bind-try", prefix, prefix]
        argv += [
            "--bind",
            str(workspace),
            SANDBOX_MOUNT,
            "--chdir",
            SANDBOX_MOUNT,
        ]
        return argv

    def _unshare_argv(self, workspace: Path, env: dict[str, str]) -> list[str]:
        return [
            "env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            self._unshare or "unshare",
            "--user",
            "--map-root-user",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
        ]

    def workdir(self, workspace: Path) -> str:
        """Where ``workspace`` is seen from inside the sandbox."""
        return SANDBOX_MOUNT if self.isolation == "bwrap" else str(workspace)

    async def run(
        self, argv: list[str], *, workspace: Path, timeout: float, env: dict[str, str] | None = None
    ) -> SandboxResult:
        """Run ``argv`` in the sandbox with ``workspace`` writable; kill the process group after ``timeout`` s."""
        isolation = self.isolation
        workspace = workspace.resolve()
        clean_env = {"PATH": SANDBOX_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        clean_env.update(env or {})
        if isolation == "bwrap":
            prefix = self._bwrap_argv(workspace, clean_env)
        else:
            prefix = self._unshare_argv(workspace, clean_env)
        full = [*prefix, *self._limits_argv(), *argv]
        proc = await asyncio.create_subprocess_exec(
            *full,
            cwd=str(workspace),
            env={"PATH": SANDBOX_PATH},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        timed_out = False
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except (TimeoutError, asyncio.CancelledError) as stop:
            timed_out = isinstance(stop, asyncio.TimeoutError)
            _kill_group(proc.pid)
            out, err = await proc.communicate()
            if not timed_out:
                raise
        return SandboxResult(
            returncode=proc.returncode if proc.returncode is not None else -1,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            timed_out=timed_out,
            isolation=isolation,
        )


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
