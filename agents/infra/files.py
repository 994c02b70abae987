"""The file-system side of QInfra's ``directory`` and ``sqlite`` resources: creating them with their owner mark,
reading the mark of a database, the files a database is made of, removing them, and moving them into a run's trash
and back (what a compensation restores).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

from agents.infra.names import OWNER_FILE


def _make_directory(path: Path, mark: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / OWNER_FILE).write_text(mark + "\n")


def _sqlite_owner(path: Path) -> tuple[bool, str | None]:
    if not path.exists():
        return False, None
    if not path.is_file() or path.is_symlink():
        return True, None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT mark FROM quantum_owner LIMIT 1").fetchone()
    except sqlite3.Error:
        return True, None
    return True, (str(row[0]) if row else None)


def _make_sqlite(path: Path, mark: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS quantum_owner (mark TEXT NOT NULL)")
        db.execute("DELETE FROM quantum_owner")
        db.execute("INSERT INTO quantum_owner (mark) VALUES (?)", (mark,))
        db.commit()


def _sqlite_files(path: Path) -> list[Path]:
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


def _remove_files(path: Path, kind: str) -> None:
    if kind == "directory":
        shutil.rmtree(path)
        return
    for file in _sqlite_files(path):
        file.unlink(missing_ok=True)


def _move_aside(path: Path, target: Path, kind: str) -> None:
    """Move a directory or a database (with its side files) into the trash, replacing an older copy there."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if kind == "directory":
        os.replace(path, target / "content")
        return
    for file in _sqlite_files(path):
        if file.exists():
            os.replace(file, target / file.name)


def _move_back(source: Path, path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "directory":
        os.replace(source / "content", path)
    else:
        for file in source.iterdir():
            os.replace(file, path.parent / file.name)
    shutil.rmtree(source)
