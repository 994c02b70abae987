"""The processes of this machine as ``/proc`` shows them: who each is (pid and start time), its command line and
its working directory. What a benchmark reads to count the processes a run left (release hosts, orphans)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agents.processes import ProcessIdentity


@dataclass(frozen=True)
class ProcessEntry:
    """One process: who it is, its command line and its working directory (None: not ours to read)."""

    identity: ProcessIdentity
    argv: list[str]
    cwd: Path | None

    def within(self, directory: Path) -> bool:
        """Whether its command line names ``directory`` (or something in it), or it works in it."""
        prefix = str(directory)
        in_argv = any(arg.endswith(prefix) or prefix + os.sep in arg for arg in self.argv)
        return in_argv or (self.cwd is not None and (self.cwd == directory or directory in self.cwd.parents))

    def option(self, name: str) -> str | None:
        """The value after ``name`` on its command line (``--root /x``), if any."""
        if name not in self.argv:
            return None
        at = self.argv.index(name) + 1
        return self.argv[at] if at < len(self.argv) else None


def processes() -> list[ProcessEntry]:
    """Every process running now but this one (zombies and processes that exit meanwhile are left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            process = _entry(int(entry.name))
            if process is not None:
                found.append(process)
    return found


def _entry(pid: int) -> ProcessEntry | None:
    identity = ProcessIdentity.of(pid)
    if identity is None or not identity.alive():
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    try:
        cwd: Path | None = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:  # another user's process, or gone
        cwd = None
    return ProcessEntry(identity=identity, argv=argv, cwd=cwd)
