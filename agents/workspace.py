"""Per-run workspaces: where a run's generated code and tests live, and the rules for paths inside them."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

from agents.errors import UNSAFE_ARTIFACT, failure
from agents.models import ArtifactFile

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class Workspaces:
    """The root under which every run gets a directory of its own, named after its run id."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def for_run(self, run_id: str) -> Path:
        name = _UNSAFE.sub("_", run_id).lstrip(".")
        if not name:
            raise ValueError(f"run id {run_id!r} gives no usable directory name")
        return self.root / name

    def src(self, run_id: str) -> Path:
        return self.for_run(run_id) / "src"

    def tests(self, run_id: str) -> Path:
        return self.for_run(run_id) / "tests"


def safe_join(base: Path, rel: str) -> Path:
    """``base / rel``, refusing absolute paths, ``..`` escapes and symlinks that lead outside ``base``."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or "\\" in rel or ".." in pure.parts or rel.startswith("~"):
        raise failure(UNSAFE_ARTIFACT, f"path {rel!r} must be relative and stay inside the workspace")
    target = base / pure
    resolved_base = base.resolve()
    if not target.resolve().is_relative_to(resolved_base):
        raise failure(UNSAFE_ARTIFACT, f"path {rel!r} leads outside the workspace")
    return target


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
