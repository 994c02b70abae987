"""The sandbox in which generated (untrusted) code runs.

bubblewrap when it is installed: every namespace unshared (no network), the system read-only, only the run's
workspace writable (mounted at ``/workspace``), a cleared environment, uid 65534, all capabilities dropped, and
``prlimit`` caps on memory, CPU time, processes, open files and file size. Without bubblewrap, ``unshare`` gives a
new user and network namespace with the same limits and a cleared environment, and the result says so; the rest of
the file system is the worker's there. Generated code is never run with plain exec. A wall-clock timeout, or the
cancellation of the caller, kills the whole process group, and the run's pids cgroup kills whatever escaped it;
output is read with a bound.

A tmpfs keeps its files in memory outside every process's address space, so the memory cap does not count them,
and an unsized one may grow to half the host's memory. Of the tmpfs mounts bubblewrap makes, only ``/tmp`` and
``/dev/shm`` are writable, each sized (``Limits.tmp_bytes``, ``Limits.shm_bytes``: writing past the size fails with
ENOSPC); the sandbox's root and its ``/dev`` are remounted read-only. Under ``unshare``, ``/tmp`` and ``/dev/shm``
are bounded the same way: fresh tmpfs mounts of those sizes in the sandbox's own mount namespace, with the workspace
and the interpreter bound back at their paths when they lie under ``/tmp``. Memory in files of no mount (``memfd``)
is bounded per file (``file_bytes``) and by the open files, not as a whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from agents.processes import run_bounded

log = logging.getLogger(__name__)

SANDBOX_MOUNT = "/workspace"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_OUTPUT_BYTES = 256 * 1024
"""The last bytes of each of stdout and stderr kept from a sandboxed run; the rest is read and dropped."""


RUNS = Counter(
    "quantum_sandbox_runs_total",
    "Sandboxed processes run to their end, by outcome (passed: exit 0, failed, timed_out) and isolation",
    ["outcome", "isolation"],
)


MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one sandboxed run may use.

    Its memory budget is ``memory_bytes`` (each process's address space) plus ``tmp_bytes`` and ``shm_bytes``: the
    files in its ``/tmp`` and ``/dev/shm`` are memory too (tmpfs), and no address-space cap counts them.
    """

    memory_bytes: int = 1024 * MIB
    cpu_seconds: int = 120
    processes: int = 64
    open_files: int = 256
    file_bytes: int = 64 * MIB
    tmp_bytes: int = 64 * MIB
    """The size of the run's ``/tmp``: writing past it fails with ENOSPC."""
    shm_bytes: int = 16 * MIB
    """The size of the run's ``/dev/shm`` (POSIX shared memory and semaphores)."""


@dataclass(frozen=True)
class SandboxResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    isolation: str


class PidsCgroup:
    """A pids cgroup of its own for one sandboxed run: a fork bomb meets ``pids.max``, and every process it left
    is killed when the run ends.

    rlimits alone cannot bound processes here: the sandbox's user namespace maps to the worker's uid outside, and
    for root ``RLIMIT_NPROC`` is not enforced. Uses cgroup v2 where the pids controller is enabled, else the v1
    pids hierarchy; where neither is writable the run goes on under rlimits only and says so.
    """

    ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/pids"))

    def __init__(self, max_pids: int) -> None:
        self.max_pids = max_pids
        self.path: Path | None = None

    def create(self) -> bool:
        for root in self.ROOTS:
            if not (root / "cgroup.procs").exists():
                continue
            if (root / "cgroup.controllers").exists() and "pids" not in (root / "cgroup.subtree_control").read_text():
                continue
            path = root / f"quantum-sandbox-{uuid.uuid4().hex[:12]}"
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(self.max_pids))
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            self.path = path
            return True
        return False

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started from inside the cgroup (the shell joins it, then becomes the command)."""
        if self.path is None:
            return argv
        return ["/bin/sh", "-c", f'echo $$ > "{self.path}/cgroup.procs" && exec "$@"', "sandbox", *argv]

    def destroy(self) -> None:
        if self.path is None:
            return
        for _ in range(50):
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            self.path.rmdir()


UNSHARE_TMPFS = """set -e
mount -t tmpfs -o "size=$1,mode=1777" tmpfs /dev/shm
mkdir /dev/shm/.tmp
mount -t tmpfs -o "size=$2,mode=1777" tmpfs /dev/shm/.tmp
shift 2
while [ "$1" != -- ]; do
  mkdir -p "/dev/shm/.tmp${1#/tmp}"
  mount --bind "$1" "/dev/shm/.tmp${1#/tmp}"
  shift
done
shift
mount --move /dev/shm/.tmp /tmp
rmdir /dev/shm/.tmp
exec "$@"
"""
"""Run by ``unshare`` in the sandbox's own mount namespace (as its root): ``sh -c UNSHARE_TMPFS name SHM_BYTES
TMP_BYTES [PATH under /tmp ...] -- COMMAND...``. A sized tmpfs on ``/dev/shm``; the new ``/tmp`` is built in it
(the paths bound at their places) and moved onto ``/tmp``, then the command runs. Any failure stops the run."""


def interpreter_prefixes() -> list[Path]:
    """Where this interpreter and its environment live; the sandbox needs them to run Python."""
    prefixes = {sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parents[1])}
    return sorted(Path(prefix) for prefix in prefixes)


def kept_under_tmp(paths: list[Path]) -> list[str]:
    """Those of ``paths`` strictly under ``/tmp`` that a fresh ``/tmp`` would hide, without those inside another."""
    tmp = Path("/tmp")
    under = sorted({p.resolve() for p in paths if p.resolve() != tmp and p.resolve().is_relative_to(tmp)})
    kept: list[Path] = []
    for path in under:
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return [str(path) for path in kept]


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
            "--unshare-user",
            "--disable-userns",
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
        argv += ["--proc", "/proc", "--dev", "/dev", *self._bwrap_tmpfs_argv()]
        for path in ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/etc/alternatives", "/etc/ssl"):
            argv += ["--ro-bind-try", path, path]
        for prefix in interpreter_prefixes():
            argv += ["--ro-bind-try", str(prefix), str(prefix)]
        argv += [
            "--bind",
            str(workspace),
            SANDBOX_MOUNT,
            "--chdir",
            SANDBOX_MOUNT,
        ]
        # bwrap's root and /dev are unsized tmpfs mounts: read-only (each alone: the mounts on them stay as they are)
        return [*argv, "--remount-ro", "/dev", "--remount-ro", "/"]

    def _bwrap_tmpfs_argv(self) -> list[str]:
        """A ``/tmp`` and a ``/dev/shm`` of their own, each a tmpfs sized by the limits (``--size`` needs bwrap 0.5)."""
        return [
            "--size",
            str(self.limits.tmp_bytes),
            "--tmpfs",
            "/tmp",
            "--size",
            str(self.limits.shm_bytes),
            "--tmpfs",
            "/dev/shm",
        ]

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
            "/bin/sh",
            "-c",
            UNSHARE_TMPFS,
            "sandbox-tmpfs",
            str(self.limits.shm_bytes),
            str(self.limits.tmp_bytes),
            *kept_under_tmp([workspace, *interpreter_prefixes()]),
            "--",
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
        cgroup = PidsCgroup(self.limits.processes)
        if cgroup.create():
            isolation += "+pids-cgroup"
        full = cgroup.wrap(self.command(argv, workspace=workspace, env=env))
        try:
            return await self._run(full, workspace, timeout, isolation)
        finally:
            cgroup.destroy()

    def command(self, argv: list[str], *, workspace: Path, env: dict[str, str] | None = None) -> list[str]:
        """The command line that runs ``argv`` in the sandbox with ``workspace`` writable, for a caller that starts
        and supervises the process itself (a released service); :meth:`run` runs one to completion."""
        workspace = workspace.resolve()
        clean_env = {"PATH": SANDBOX_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        clean_env.update(env or {})
        if self.isolation == "bwrap":
            prefix = self._bwrap_argv(workspace, clean_env)
        else:
            prefix = self._unshare_argv(workspace, clean_env)
        return [*prefix, *self._limits_argv(), *argv]

    async def _run(self, full: list[str], workspace: Path, timeout: float, isolation: str) -> SandboxResult:
        done = await run_bounded(
            full,
            timeout=timeout,
            env={"PATH": SANDBOX_PATH},
            cwd=workspace,
            max_output=MAX_OUTPUT_BYTES,
            keep_tail=True,
            guard_group=True,
        )
        outcome = "timed_out" if done.timed_out else ("passed" if done.returncode == 0 else "failed")
        RUNS.labels(outcome, isolation).inc()
        return SandboxResult(
            returncode=done.returncode,
            stdout=done.stdout.decode(errors="replace"),
            stderr=done.stderr.decode(errors="replace"),
            timed_out=done.timed_out,
            isolation=isolation,
        )
