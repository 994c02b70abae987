"""The committed dashboards and alert rules are what the code generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from quantum.observability import DASHBOARDS_DIR, artifacts

ROOT = Path(__file__).parents[2]
REGENERATE = "python -m quantum.observability"


def test_the_committed_files_are_what_the_code_generates() -> None:
    for relative, text in artifacts().items():
        committed = ROOT / relative
        assert committed.exists(), f"{relative} is missing: run `{REGENERATE}` from the repository root"
        assert committed.read_text(encoding="utf-8") == text, (
            f"{relative} is stale: run `{REGENERATE}` from the repository root and commit the result"
        )


def test_no_dashboard_is_committed_that_the_code_no_longer_generates() -> None:
    generated = {path.name for path in artifacts() if path.parent == DASHBOARDS_DIR}
    committed = {path.name for path in (ROOT / DASHBOARDS_DIR).iterdir()}
    assert committed == generated, f"remove {sorted(committed - generated)} from {DASHBOARDS_DIR}"


def test_the_command_writes_every_file(tmp_path: Path) -> None:
    done = subprocess.run(  # noqa: S603 - a fixed argv
        [sys.executable, "-m", "quantum.observability", str(tmp_path)], capture_output=True, text=True, check=True
    )
    expected = artifacts()
    assert done.stdout.splitlines() == [str(tmp_path / relative) for relative in expected]
    for relative, text in expected.items():
        assert (tmp_path / relative).read_text(encoding="utf-8") == text
