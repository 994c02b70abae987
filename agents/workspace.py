"""Per-run workspaces: where a run's generated code and tests live, and the rules for paths inside them.

A run's directory is named after its run id by an injective mapping (a readable part plus a digest of the whole
id), so two runs never share a directory, a deployment or a monitoring file, however alike their ids; and it holds
an owner file with the exact run id, so a compensation removes only what its own run created.

Sandboxed code never sees these directories. Each sandboxed run gets a fresh *scratch* directory holding copies of
the run's files (:meth:`Workspaces.scratch`); after the sandbox exits, everything in it is hostile data: it is read
only through :func:`read_untrusted` (no symbolic links followed at any level, regular files only, a size bound)
and then removed without following links.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from agents.errors import UNSAFE_ARTIFACT, failure
from agents.models import ArtifactFile

log = logging.getLogger(__name__)

OWNER_FILE = ".quantum-run"
SCRATCH_DIR = "scratch"
MAX_PATH_CHARS = 200
MAX_PART_CHARS = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_READABLE_CHARS = 60
_DIGEST_CHARS = 24


def run_dir_name(run_id: str) -> str:
    """A directory name for ``run_id``: readable, safe, and distinct for distinct ids.

    ``coll:2`` and ``coll_2`` share the readable part ``coll_2`` but not the digest of the whole id (96 bits of
    sha256), so the mapping is injective for every practical purpose.
    """
    if not run_id:
        raise ValueError("a run id cannot be empty")
    readable = _UNSAFE.sub("_", run_id)[:_READABLE_CHARS].lstrip(".-") or "run"
    digest = hashlib.sha256(run_id.encode("utf-8", errors="surrogatepass")).hexdigest()[:_DIGEST_CHARS]
    return f"{readable}-{digest}"


class UntrustedFile(Exception):
    """A file left by sandboxed code that cannot be read as asked; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Workspaces:
    """The root under which every run gets a directory of its own, named after its run id."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def for_run(self, run_id: str) -> Path:
        return self.root / run_dir_name(run_id)

    def src(self, run_id: str) -> Path:
        return self.for_run(run_id) / "src"

    def tests(self, run_id: str) -> Path:
        return self.for_run(run_id) / "tests"

    def claim(self, run_id: str) -> Path:
        """The run's directory, created with its owner file; refused when another run's owner file is there."""
        path = self.for_run(run_id)
        path.mkdir(parents=True, exist_ok=True)
        owner = path / OWNER_FILE
        if owner.is_symlink() or not owner.is_file() or not owner.read_text():
            # written whole under another name, then renamed into place: a worker killed while claiming leaves no
            # empty owner file that would refuse the run's own retry (one left by a worker from before is claimed)
            fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{OWNER_FILE}.")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(run_id)
            os.replace(tmp, owner)
        if owner.read_text() != run_id:
            raise failure(UNSAFE_ARTIFACT, f"workspace {path.name} belongs to another run")
        return path

    def owned_by(self, run_id: str) -> bool:
        """Whether the run's directory is this run's (its owner file names it); False when there is none."""
        owner = self.for_run(run_id) / OWNER_FILE
        return owner.is_file() and not owner.is_symlink() and owner.read_text() == run_id

    @contextlib.contextmanager
    def scratch(self, run_id: str) -> Iterator[Path]:
        """A fresh, empty directory for one sandboxed run of ``run_id``, removed (links not followed) afterwards."""
        parent = self.claim(run_id) / SCRATCH_DIR
        parent.mkdir(exist_ok=True)
        path = parent / uuid.uuid4().hex
        path.mkdir()
        try:
            yield path
        finally:
            remove_tree(path)

    def remove_scratch(self, run_id: str) -> list[str]:
        """Remove every scratch directory a run left (a worker that died mid-run); what went."""
        parent = self.for_run(run_id) / SCRATCH_DIR
        if not parent.is_dir() or parent.is_symlink():
            return []
        gone = [str(p) for p in parent.iterdir()]
        remove_tree(parent)
        return gone


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it without following any link (a link itself is just unlinked)."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
            return
        shutil.rmtree(path)  # fd-based on Linux: links inside are removed, never followed
    except FileNotFoundError:
        return


def relative_path_problem(rel: str) -> str | None:
    """Why ``rel`` cannot name a file in a workspace, or None when it can.

    Relative, made of plain names (letters, digits, ``_``, ``.``, ``-``; none starting with ``.`` or ``-``), each at
    most 100 characters and 200 in all: nothing a file system, a scanner's exclusions or a shell reads differently.
    """
    if not rel:
        return "is empty"
    if len(rel) > MAX_PATH_CHARS:
        return f"is {len(rel)} characters long, over the {MAX_PATH_CHARS} limit"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in rel):
        return "contains a control character"
    for part in rel.split("/"):
        if not part:
            return "has an empty part"
        if len(part) > MAX_PART_CHARS:
            return f"has a part over {MAX_PART_CHARS} characters"
        if part in {".", ".."} or part == "__pycache__" or not _PART.match(part):
            return f"has the part {part!r}: parts are letters, digits, '_', '.', '-', not starting with '.' or '-'"
    return None


def safe_join(base: Path, rel: str) -> Path:
    """``base / rel``, refusing unsafe names (see :func:`relative_path_problem`) and links that lead outside."""
    problem = relative_path_problem(rel)  # an absolute path has an empty first part
    if problem:
        raise failure(UNSAFE_ARTIFACT, f"path {rel[:MAX_PATH_CHARS]!r} {problem}")
    target = base / PurePosixPath(rel)
    if not target.resolve().is_relative_to(base.resolve()):
        raise failure(UNSAFE_ARTIFACT, f"path {rel!r} leads outside the workspace")
    return target


def read_untrusted(base: Path, rel: str, *, max_bytes: int) -> bytes:
    """Read ``base/rel`` written by untrusted code: no link followed at any level, a regular file, ``max_bytes``.

    Raises:
        UntrustedFile: It is missing, a link, a FIFO or device, a directory, or larger than ``max_bytes``.
    """
    parts = PurePosixPath(rel).parts
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(base, flags_dir)
    except OSError as err:
        raise UntrustedFile(f"{base}: {err.strerror}") from None
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, flags_dir, dir_fd=fd)
            except OSError as err:
                raise UntrustedFile(_why(rel, err)) from None
            os.close(fd)
            fd = next_fd
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except OSError as err:
            raise UntrustedFile(_why(rel, err)) from None
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedFile(f"{rel} is not a regular file")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UntrustedFile(f"{rel} is larger than {max_bytes} bytes")
    return data


def _why(rel: str, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return f"{rel} is (or passes through) a symbolic link"
    if err.errno == errno.ENOTDIR:
        return f"{rel} passes through a symbolic link or something else that is not a directory"
    if err.errno == errno.ENOENT:
        return f"{rel} is missing"
    return f"{rel}: {err.strerror}"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_record(path: Path, base: Path) -> ArtifactFile:
    """The artifact record of ``path``, named relative to ``base``."""
    return ArtifactFile(path=path.relative_to(base).as_posix(), sha256=sha256_file(path), size=path.stat().st_size)


def files_under(directory: Path, pattern: str = "*.py") -> list[Path]:
    """Regular files matching ``pattern`` under ``directory``, sorted; nothing when it does not exist."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob(pattern) if p.is_file() and not p.is_symlink())


def copy_files(source: Path, target: Path, pattern: str = "*.py") -> int:
    """Copy the regular files under ``source`` (links skipped) into ``target``, keeping their relative paths."""
    count = 0
    for path in files_under(source, pattern):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest, follow_symlinks=False)
        count += 1
    return count
