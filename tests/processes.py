"""Processes the scale and chaos tests start, kill with SIGKILL and start again: ``quantum worker`` and ``quantum
bridge`` as a cluster runs them, and NATS servers (alone or in a cluster) on file stores that survive a kill."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.support import QUANTUM, answers
from tests.conftest import BIN, free_port, terminate


class _Killable:
    """A child process the tests kill with SIGKILL, or stop with SIGTERM (then SIGKILL after ``grace`` seconds)."""

    proc: subprocess.Popen[bytes] | None
    grace: float = 10

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            terminate(self.proc, self.grace)


@dataclass
class NatsNode(_Killable):
    """One server of the cluster, with a file store that survives its SIGKILL."""

    name: str
    port: int
    cluster_port: int
    store: Path
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.store.parent / f"{self.name}.conf"
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
        cluster = (
            f"cluster {{\n  name: quantum\n  listen: 127.0.0.1:{self.cluster_port}\n  routes: [{routes}]\n}}\n"
            if self.cluster_port
            else ""  # a server on its own
        )
        config.write_text(
            f"server_name: {self.name}\nlisten: 127.0.0.1:{self.port}\n"
            f'jetstream {{\n  store_dir: "{self.store}"\n  sync_interval: always\n}}\n' + cluster
        )
        log = (self.store.parent / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen([str(BIN / "nats-server"), "-c", str(config)], stdout=log, stderr=log)


@contextlib.contextmanager
def nats_cluster(directory: Path, size: int = 3) -> Iterator[list[NatsNode]]:
    ports = [(free_port(), free_port()) for _ in range(size)]
    nodes = [
        NatsNode(f"n{i}", port, cluster, directory / f"n{i}", routes=[c for j, (_, c) in enumerate(ports) if j != i])
        for i, (port, cluster) in enumerate(ports)
    ]
    for node in nodes:
        node.store.mkdir(parents=True)
        node.start()
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@dataclass
class Process(_Killable):
    """A ``quantum`` process (worker or bridge) as a cluster runs it."""

    name: str
    command: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    grace: float = 60  # a worker drains its activities first

    @property
    def metrics_port(self) -> int:
        return int(self.env["QUANTUM_METRICS_PORT"])

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(QUANTUM), self.command], env=self.env, stdout=out, stderr=out)

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not answers(self.metrics_port):
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples with ``labels`` on this process's ``/metrics`` now."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )


async def publish_until_acknowledged(nc: NATS, subject: str, data: bytes, msg_id: str) -> None:
    """Publish until JetStream acknowledges it (stored, on a quorum of a cluster), as any client should: a server
    may be down, a leader moving; the message id makes each retry harmless."""
    for attempt in range(100):
        try:
            await nc.jetstream(timeout=5).publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            return
        except Exception:
            await asyncio.sleep(min(1.0, 0.1 * (attempt + 1)))
    raise AssertionError(f"{msg_id} was never acknowledged")
