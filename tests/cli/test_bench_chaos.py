"""``quantum bench chaos`` as a user runs it: a fresh stack of its own, two workers, one killed with SIGKILL; the
figures it prints and writes as JSON, and its exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from agents.processes import die_with_parent
from tests.cli.support import QUANTUM, one_line_error

pytestmark = pytest.mark.workflow


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    return env | {"COLUMNS": "200"}


def quantum_bench(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``quantum bench ARGS``, ended with SIGTERM if this process dies (its stack and workers then die with it)."""
    return subprocess.run(
        [str(QUANTUM), "bench", *args],
        env=bench_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )


@pytest.mark.timeout(600)
def test_bench_chaos_writes_its_figures_and_exits_0_when_nothing_is_duplicated_or_lost(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = quantum_bench(
        "chaos", "--runs", "2", "--kills", "1", "--seed", "7", "--json", str(out), cwd=tmp_path, timeout=540
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "quantum bench chaos" in done.stdout and "failover" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["ok"] is True
    assert figures["config"]["seed"] == 7 and figures["runs"] == 2 and figures["kills"] == 1
    assert figures["endings"]["succeeded"] + figures["endings"]["compensated"] == 2
    assert figures["duplicates"]["total"] == 0 and figures["losses"]["total"] == 0, figures["details"]
    assert figures["leftovers"]["total"] == 0 and figures["orphans"] == []
    assert figures["events"] >= 6
    failover = figures["failover"]
    assert failover["measured"] >= 1 and failover["median_seconds"] > 0, failover
    assert all(s["seconds"] > 0 for s in failover["samples"] if s["seconds"] is not None)


def test_bench_chaos_refuses_bad_counts_before_starting_anything(tmp_path: Path) -> None:
    done = quantum_bench("chaos", "--runs", "0", cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "--runs" in one_line_error(done)
