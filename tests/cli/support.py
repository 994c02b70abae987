"""Running ``quantum`` as a user runs it: the installed console script, in a child process, on chosen ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from quantum.stack import port_in_use
from tests.conftest import free_port

QUANTUM = Path(sys.executable).parent / "quantum"


def quantum_env(data_dir: Path, temporal_port: int, nats_port: int, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env.update(
        QUANTUM_DATA_DIR=str(data_dir),
        QUANTUM_TEMPORAL_ADDRESS=f"127.0.0.1:{temporal_port}",
        QUANTUM_TEMPORAL_UI_PORT=str(free_port()),
        QUANTUM_NATS_URL=f"nats://127.0.0.1:{nats_port}",
        QUANTUM_METRICS_PORT=str(metrics_port),
        QUANTUM_PROMETHEUS_PORT=str(free_port()),
        COLUMNS="160",
    )
    return env


def quantum(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUANTUM), *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def answers(port: int) -> bool:
    return port_in_use("127.0.0.1", port)


def processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if text in line and "ps -eo" not in line]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command wrote to stderr; fails the test on a traceback or a longer report."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def requested_run_at_gate(env: dict[str, str], *request_args: str, gate: str = "deploy", timeout: float = 180) -> str:
    """Request a run with ``quantum pipeline request ARGS --no-follow``; its id once it waits at ``gate``."""
    started = quantum(env, "pipeline", "request", *request_args, "--no-follow")
    assert started.returncode == 0, started.stderr + started.stdout
    run_id = next(w for w in started.stdout.split() if w.startswith("pipeline-"))
    deadline = time.monotonic() + timeout
    while True:  # the request went over the bus: the bridge starts the run a moment later
        answer = quantum(env, "pipeline", "status", run_id, "--json")
        view = json.loads(answer.stdout) if answer.returncode == 0 else {"status": "running", "pending_gate": None}
        if view["pending_gate"] == gate:
            return run_id
        assert view["status"] in {"running", "awaiting_review"}, view
        assert time.monotonic() < deadline, view
        time.sleep(0.5)
