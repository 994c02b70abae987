"""What ``quantum up`` starts belongs to it: it dies with it, or is adopted by the next one, and keeps no secret.

Each test runs ``quantum up`` as a program on free ports and a data directory of its own, and watches the servers
through ``/proc`` (both mention the data directory in their arguments).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import (
    Up,
    alive,
    cmdline,
    dead_identity,
    environ,
    processes_mentioning,
    session_members,
    start_ticks,
    up_env,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

CANARIES = {
    "QUANTUM_LLM_API_KEY": "sk-canary-quantum-llm-5f1c",
    "OPENAI_API_KEY": "sk-canary-openai-9b2e",
    "QUANTUM_QDRANT_API_KEY": "canary-qdrant-77d0",
}

LEFT_BEHIND = """
import asyncio

import agents.processes

# this owner's servers outlive it, as if they had been started without a parent-death signal
agents.processes.die_with_parent = lambda sig=None: None

from quantum.settings import Settings
from quantum.stack import EmbeddedStack


async def main() -> None:
    async with EmbeddedStack(Settings(_env_file=None), console_log=print):
        print("READY", flush=True)
        await asyncio.Event().wait()


asyncio.run(main())
"""

DECOY = """
import signal, sys, time

def note(number, frame):
    with open(sys.argv[1], "a") as out:
        out.write(f"{number}\\n")

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCONT):
    signal.signal(sig, note)
print("READY", flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture(autouse=True)
def _reap(tmp_path: Path) -> Iterator[None]:
    """Whatever the outcome, kill what still runs for this test (a failing test's leftovers)."""
    yield
    for up in Up.started:
        if up.proc.poll() is None:
            up.kill()
    Up.started.clear()
    for pid in processes_mentioning(str(tmp_path / "data")):
        os.kill(pid, signal.SIGKILL)


SERVERS = 3 if shutil.which("prometheus") else 2
"""Temporal, NATS and, where Debian's prometheus is installed, Prometheus."""


def servers_of(data_dir: Path) -> list[int]:
    """The server processes of this data directory, once all run."""
    wait_until(lambda: len(processes_mentioning(str(data_dir))) == SERVERS, f"{SERVERS} servers mentioning {data_dir}")
    return processes_mentioning(str(data_dir))


def records(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "run").glob("*.json")) if (data_dir / "run").is_dir() else []


def test_killing_up_with_sigkill_takes_both_servers_with_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = Up(up_env(data), tmp_path)
    servers = servers_of(data)
    family = session_members(servers)  # the servers and anything they started in their sessions
    assert set(servers) <= set(family)

    up.kill()

    wait_until(lambda: processes_mentioning(str(data)) == [], f"the servers of {data} to exit after kill -9 of up")
    wait_until(lambda: session_members(servers) == [], "nothing left in the servers' sessions")
    assert not any(alive(pid) for pid in family)


def test_a_server_left_alive_is_adopted_by_the_next_up_and_stopped_by_its_clean_stop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = up_env(data)
    output = tmp_path / "left-behind.log"
    with output.open("w") as out:
        owner = subprocess.Popen(
            [sys.executable, "-c", LEFT_BEHIND], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    wait_until(lambda: owner.poll() is None and "READY" in output.read_text(), "the first owner to start its servers")
    left = servers_of(data)
    owner.kill()
    owner.wait()
    assert processes_mentioning(str(data)) == left  # the servers outlived their owner

    up = Up(env, tmp_path)
    assert "adopted Temporal dev server" in up.output, up.output
    assert "adopted nats-server" in up.output, up.output
    if SERVERS == 3:
        assert "adopted Prometheus" in up.output, up.output
    assert processes_mentioning(str(data)) == left  # it started nothing of its own

    assert up.stop() == 0, up.output
    assert processes_mentioning(str(data)) == []
    assert records(data) == []


def test_a_recorded_pid_that_is_now_another_process_is_never_signalled(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = up_env(data)
    noted = tmp_path / "signals.txt"
    decoy = subprocess.Popen(
        [sys.executable, "-c", DECOY, str(noted)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert decoy.stdout is not None and decoy.stdout.readline().strip() == "READY"
        owner_pid, owner_start = dead_identity()
        temporal_address = env["QUANTUM_TEMPORAL_ADDRESS"]
        nats_url = env["QUANTUM_NATS_URL"]
        (data / "run").mkdir(parents=True)
        for name, address in (("temporal", temporal_address), ("nats", nats_url)):
            record = {  # right pid and command line, but the start time of an earlier process with that pid
                "name": name,
                "process": {"pid": decoy.pid, "start": start_ticks(decoy.pid) - 1},
                "owner": {"pid": owner_pid, "start": owner_start},
                "argv": cmdline(decoy.pid),
                "address": address,
                "ui_url": None,
            }
            (data / "run" / f"{name}.json").write_text(json.dumps(record))

        up = Up(env, tmp_path)
        assert f"Temporal dev server (pid {decoy.pid})" in up.output, up.output  # it read the records ...
        assert "has exited" in up.output, up.output  # ... and found them stale
        assert "started Temporal dev server" in up.output and "started nats-server" in up.output, up.output
        servers = servers_of(data)
        recorded = {json.loads(path.read_text())["process"]["pid"] for path in records(data)}
        assert recorded == set(servers)  # the stale records were replaced by records of what this up started

        assert up.stop() == 0, up.output
        assert records(data) == []
        assert alive(decoy.pid)
        assert not noted.exists(), noted.read_text()
    finally:
        decoy.kill()
        decoy.wait()


def test_no_secret_of_up_reaches_a_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = Up(up_env(data, **CANARIES), tmp_path)
    try:
        servers = servers_of(data)
        for pid in servers:
            env = environ(pid)
            assert env, f"cannot read the environment of {pid}"
            for name, value in CANARIES.items():
                assert value.encode() not in env, f"{name} reached {' '.join(cmdline(pid))}"
    finally:
        assert up.stop(signal.SIGINT) == 0, up.output
    assert processes_mentioning(str(data)) == []
    assert records(data) == []
