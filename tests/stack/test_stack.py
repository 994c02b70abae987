"""The embedded stack: real ``temporal server start-dev`` and ``nats-server`` processes, started and stopped."""

from __future__ import annotations

import socket
from pathlib import Path

import nats
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from quantum.settings import Settings
from quantum.stack import EmbeddedStack, StackError, nats_answers, port_in_use, temporal_answers
from tests.conftest import free_port


def settings_for(data_dir: Path, temporal_port: int | None = None, nats_port: int | None = None) -> Settings:
    return Settings(  # type: ignore[call-arg]
        data_dir=data_dir,
        temporal_address=f"127.0.0.1:{temporal_port or free_port()}",
        temporal_ui_port=free_port(),
        nats_url=f"nats://127.0.0.1:{nats_port or free_port()}",
        _env_file=None,
    )


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in {"Z", "X"}
    except FileNotFoundError:
        return True


async def test_starts_both_uses_them_and_stops_them(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    async with EmbeddedStack(settings) as stack:
        assert stack.started == ["temporal", "nats"]
        assert await temporal_answers(stack.temporal_address)
        assert await nats_answers(stack.nats_url)
        assert stack.temporal_ui_url == f"http://127.0.0.1:{settings.temporal_ui_port}"
        assert port_in_use("127.0.0.1", settings.temporal_ui_port or 0)  # the Web UI is on

        client = await Client.connect(stack.temporal_address)
        assert [wf async for wf in client.list_workflows()] == []

        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        await js.add_stream(name="PROBE", subjects=["probe.>"])
        ack = await js.publish("probe.one", b"hello")
        assert ack.stream == "PROBE" and ack.seq == 1
        await nc.close()

        # a second stack on the same addresses uses what answers and starts nothing
        async with EmbeddedStack(settings) as second:
            assert second.started == []
            assert second.temporal_address == stack.temporal_address

        pids = [server._process.proc.pid for server in stack._servers]  # type: ignore[union-attr]
    assert all(pid_gone(pid) for pid in pids)
    assert not port_in_use(*settings.temporal_host_port)
    assert not port_in_use(*settings.nats_host_port)
    assert (tmp_path / "data" / "temporal" / "temporal.db").is_file()


async def test_runs_and_events_survive_a_restart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    async with EmbeddedStack(settings) as stack:
        client = await Client.connect(stack.temporal_address)
        await client.start_workflow("NotServedHere", id="survivor", task_queue="nobody-polls-this")
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept.>"])
        await js.publish("kept.one", b"acknowledged")
        await nc.close()

    async with EmbeddedStack(settings) as stack:
        assert stack.started == ["temporal", "nats"]
        client = await Client.connect(stack.temporal_address)
        description = await client.get_workflow_handle("survivor").describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
        nc = await nats.connect(stack.nats_url)
        message = await nc.jetstream().get_msg("KEPT", 1)
        assert message.data == b"acknowledged"
        await nc.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("service", ["Temporal", "NATS"])
async def test_a_port_taken_by_something_else_is_a_clear_error(tmp_path: Path, service: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = settings_for(
            tmp_path / "data", **({"temporal_port": port} if service == "Temporal" else {"nats_port": port})
        )
        with pytest.raises(StackError, match=f"127.0.0.1:{port} is in use by something that is not {service}"):
            async with EmbeddedStack(settings):
                pass
    # nothing it started is left running
    assert not port_in_use(*settings.temporal_host_port) or service == "Temporal"


async def test_a_remote_address_that_does_not_answer_is_named(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    settings = settings.model_copy(update={"temporal_address": "temporal.invalid:7233"})
    with pytest.raises(StackError, match="temporal.invalid:7233 does not answer.*QUANTUM_TEMPORAL_ADDRESS"):
        async with EmbeddedStack(settings):
            pass
