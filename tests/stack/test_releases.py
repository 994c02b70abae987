"""Releases that runs deploy belong to the ``quantum up`` whose worker started them, like its servers do.

``kill -9`` of ``up`` takes its releases with it; the next ``up`` starts them again where they were; a clean stop
leaves no release running.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import QUANTUM, Up, processes_mentioning, up_env, wait_gone, wait_until

pytestmark = pytest.mark.timeout(300)

CANARY = "sk-canary-release-31c7"


@pytest.fixture(autouse=True)
def _reap(tmp_path: Path) -> Iterator[None]:
    yield
    for up in Up.started:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    Up.started.clear()
    for pid in processes_mentioning(str(tmp_path)):
        subprocess.run(["kill", "-9", str(pid)], check=False)


def answers(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def test_releases_die_with_up_and_come_back_with_the_next(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = up_env(data, QUANTUM_LLM_API_KEY=CANARY)
    first = Up(env, tmp_path, "first")
    requested = subprocess.run(
        [str(QUANTUM), "pipeline", "request", "--prompt", "a slugify helper for titles", "--project", "slugs",
         "--no-follow"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert requested.returncode == 0, requested.stdout + requested.stderr
    deployments = data / "deployments"
    wait_until(lambda: any(deployments.glob("*/deployment.json")), "the run to deploy its release")
    record = json.loads(next(deployments.glob("*/deployment.json")).read_text())
    url = record["deployment"]["url"]
    wait_until(lambda: answers(url), "the release to answer")
    release = processes_mentioning(str(deployments))
    assert release, "the release runs as a process of its own"
    assert CANARY.encode() not in Path(f"/proc/{release[0]}/environ").read_bytes()

    first.kill()
    wait_gone(str(data), "everything of the killed up to exit")
    assert not answers(url)

    second = Up(env, tmp_path, "second")
    assert "started again" in second.output
    wait_until(lambda: answers(url), "the release to answer again at its URL")

    assert second.stop(signal.SIGINT) == 0
    wait_gone(str(data), "a clean stop to leave nothing running")
    assert not answers(url)
