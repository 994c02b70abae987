"""``quantum up`` as a user starts it, for the tests that drive the CLI against the whole product."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.support import QUANTUM, answers, processes_mentioning, quantum_env
from tests.conftest import free_port


@contextlib.contextmanager
def quantum_up(tmp_path: Path) -> Iterator[dict[str, str]]:
    """``quantum up``, stopped with SIGTERM at the end; asserts it left nothing behind."""
    temporal_port, nats_port, metrics_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "data"
    env = quantum_env(data_dir, temporal_port, nats_port, metrics_port)
    log = (tmp_path / "up.log").open("w")
    proc = subprocess.Popen([str(QUANTUM), "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "Press Ctrl-C" not in (tmp_path / "up.log").read_text():
        assert proc.poll() is None, (tmp_path / "up.log").read_text()
        assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
        time.sleep(0.2)
    try:
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        output = (tmp_path / "up.log").read_text()
        assert code == 0, output
        assert not answers(temporal_port) and not answers(nats_port) and not answers(metrics_port)
        assert processes_mentioning(str(data_dir)) == []


@pytest.fixture
def stack_up(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The whole product for one test."""
    with quantum_up(tmp_path) as env:
        yield env


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The whole product, shared by the tests of a module."""
    with quantum_up(tmp_path_factory.mktemp("product")) as env:
        yield env
