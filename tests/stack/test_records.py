"""Run records in ``<data>/run``: written for what a stack starts, acted on only for the very process they name."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.processes import ProcessIdentity
from quantum.settings import Settings
from quantum.stack import EmbeddedStack, RunRecord, StackError
from quantum.stack.records import read_record, record_path, write_record

from .helpers import alive, cmdline, dead_identity
from .test_stack import server_pids, settings_for


@pytest.fixture
def stray() -> Iterator[subprocess.Popen[bytes]]:
    """A process in a session of its own that answers nothing: what a hung server looks like from outside."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def record_for(proc: subprocess.Popen[bytes], name: str, address: str, owner: ProcessIdentity) -> RunRecord:
    identity = ProcessIdentity.of(proc.pid)
    assert identity is not None
    return RunRecord(name=name, process=identity, owner=owner, argv=cmdline(proc.pid), address=address)


def write(settings: Settings, record: RunRecord) -> Path:
    path = record_path(settings.data_path, record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record.model_dump_json())
    return path


def owner_gone() -> ProcessIdentity:
    pid, start = dead_identity()
    return ProcessIdentity(pid=pid, start=start)


@pytest.mark.timeout(60)
async def test_each_started_server_is_recorded_while_it_runs(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    async with EmbeddedStack(settings) as stack:
        temporal = read_record(record_path(settings.data_path, "temporal"))
        nats = read_record(record_path(settings.data_path, "nats"))
        assert temporal is not None and nats is not None
        assert [temporal.pid, nats.pid] == server_pids(stack)
        assert temporal.running() and nats.running()
        assert temporal.owner == nats.owner == ProcessIdentity.of(os.getpid())
        assert temporal.address == settings.temporal_address and temporal.ui_url == stack.temporal_ui_url
        assert nats.address == settings.nats_url
    assert list((settings.data_path / "run").glob("*.json")) == []


@pytest.mark.timeout(60)
async def test_a_recorded_server_that_does_not_answer_is_stopped_and_replaced(
    tmp_path: Path, stray: subprocess.Popen[bytes]
) -> None:
    settings = settings_for(tmp_path / "data")
    path = write(settings, record_for(stray, "temporal", settings.temporal_address, owner_gone()))
    lines: list[str] = []
    async with EmbeddedStack(settings, console_log=lines.append) as stack:
        assert stray.poll() == -signal.SIGTERM  # it was stopped before the stack went on
        assert lines[0].startswith(f"stopping Temporal dev server (pid {stray.pid}), left running by quantum process")
        assert stack.started == ["temporal", "nats"] and stack.adopted == []
        replaced = read_record(path)
        assert replaced is not None and replaced.pid == server_pids(stack)[0]
    assert not path.exists()


@pytest.mark.timeout(60)
async def test_a_record_whose_owner_still_runs_is_left_alone(tmp_path: Path, stray: subprocess.Popen[bytes]) -> None:
    settings = settings_for(tmp_path / "data")
    me = ProcessIdentity.of(os.getpid())
    assert me is not None
    path = write(settings, record_for(stray, "nats", settings.nats_url, me))
    before = path.read_text()
    stack = EmbeddedStack(settings)
    with pytest.raises(StackError, match=f"nats-server \\(pid {stray.pid}\\) of a quantum process .*QUANTUM_DATA_DIR"):
        async with stack:
            pass
    assert alive(stray.pid)
    assert path.read_text() == before
    assert stack.started == ["temporal"]  # it got as far as NATS, and stopped Temporal again
    assert not (settings.data_path / "run" / "temporal.json").exists()


@pytest.mark.timeout(60)
async def test_a_record_that_is_not_one_is_removed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    path = record_path(settings.data_path, "temporal")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    async with EmbeddedStack(settings) as stack:
        record = read_record(path)
        assert record is not None and record.pid == server_pids(stack)[0]


def test_a_first_record_is_not_overwritten_by_a_second_start(tmp_path: Path, stray: subprocess.Popen[bytes]) -> None:
    path = tmp_path / "run" / "nats.json"
    first = record_for(stray, "nats", "nats://127.0.0.1:1", owner_gone())
    second = first.model_copy(update={"address": "nats://127.0.0.1:2"})
    assert write_record(path, first, exclusive=True)
    assert not write_record(path, second, exclusive=True)
    assert read_record(path) == first
    assert write_record(path, second)  # a stack adopting the server rewrites its record
    assert read_record(path) == second
    assert [p.name for p in path.parent.iterdir()] == ["nats.json"]
