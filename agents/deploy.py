"""The deploy agent: a release is a real process answering a health check, and a rollback really stops it.

Deployments are tracked in a state file per run, so that a retried deploy finds the process it already started
and a rollback in another worker process still finds what to stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from temporalio import activity

from agents.errors import DEPLOYMENT_FAILURE, INVALID_REQUEST, failure
from agents.models import DeployInput, Deployment, RollbackResult, RunRef, VerifyResult
from agents.workspace import Workspaces

DEPLOYMENTS = Counter("quantum_agent_deployments_total", "Deployments started and rolled back", ["action"])
START_TIMEOUT_SECONDS = 15.0
STOP_GRACE_SECONDS = 5.0


def get_health(url: str, timeout: float = 3.0) -> tuple[int | None, dict[str, Any]]:
    """GET ``url``/healthz: (status code, JSON body); (None, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as resp:  # noqa: S310 - our own loopback URL
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}
    except (OSError, ValueError):
        return None, {}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in {"Z", "X"}
    except (FileNotFoundError, IndexError):
        return False


class DeployAgent:
    """Starts each run's release as a process of its own, verifies it, and stops it on rollback."""

    def __init__(self, workspaces: Workspaces, state_dir: Path, host: str = "127.0.0.1") -> None:
        self.workspaces = workspaces
        self.state_dir = state_dir
        self.host = host
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def _run_dir(self, run_id: str) -> Path:
        return self.state_dir / self.workspaces.for_run(run_id).name

    def _state(self, run_id: str) -> Deployment | None:
        path = self._run_dir(run_id) / "deployment.json"
        return Deployment.model_validate_json(path.read_text()) if path.is_file() else None

    @activity.defn(name="deploy.deploy")
    async def deploy(self, inp: DeployInput) -> Deployment:
        """Release the run's code: copy it, start the release process, wait until ``/healthz`` answers."""
        current = self._state(inp.run_id)
        if current and current.release == inp.release and pid_alive(current.pid):
            status, body = await asyncio.to_thread(get_health, current.url)
            if status == 200 and body.get("release") == inp.release:
                return current
        if current:
            await asyncio.to_thread(self._stop, inp.run_id)
        return await asyncio.to_thread(self._start, inp)

    def _start(self, inp: DeployInput) -> Deployment:
        src = self.workspaces.src(inp.run_id)
        if not src.is_dir():
            raise failure(INVALID_REQUEST, f"no code to deploy for {inp.run_id}")
        run_dir = self._run_dir(inp.run_id)
        release_dir = run_dir / "release"
        shutil.rmtree(release_dir, ignore_errors=True)
        shutil.copytree(src, release_dir)
        port_file = run_dir / "port"
        port_file.unlink(missing_ok=True)
        log = (run_dir / "release.log").open("ab")
        proc = subprocess.Popen(  # noqa: S603 - our own release server, not the generated code
            [
                sys.executable,
                "-m",
                "agents.release_server",
                "--root",
                str(release_dir),
                "--release",
                inp.release,
                "--host",
                self.host,
                "--port",
                "0",
                "--port-file",
                str(port_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._children[inp.run_id] = proc
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_file.is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                self._stop(inp.run_id)
                raise failure(DEPLOYMENT_FAILURE, f"release process did not start; see {run_dir / 'release.log'}")
            time.sleep(0.05)
        port = int(port_file.read_text())
        deployment = Deployment(
            run_id=inp.run_id, url=f"http://{self.host}:{port}", pid=proc.pid, port=port, release=inp.release
        )
        (run_dir / "deployment.json").write_text(deployment.model_dump_json())
        while get_health(deployment.url, timeout=1)[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                self._stop(inp.run_id)
                raise failure(DEPLOYMENT_FAILURE, f"release at {deployment.url} never became healthy")
            time.sleep(0.05)
        DEPLOYMENTS.labels("deployed").inc()
        activity.logger.info("release %s of %s serving at %s", inp.release[:12], inp.project, deployment.url)
        return deployment

    @activity.defn(name="deploy.verify")
    async def verify(self, deployment: Deployment) -> VerifyResult:
        """Ask the release for its health and check it serves the release that was deployed."""
        status, body = await asyncio.to_thread(get_health, deployment.url)
        if status is None:
            return VerifyResult(healthy=False, detail=f"nothing answers at {deployment.url}")
        matches = body.get("release") == deployment.release
        detail = "" if matches else f"serves release {body.get('release')!r}, expected {deployment.release!r}"
        return VerifyResult(healthy=status == 200, status_code=status, release_matches=matches, detail=detail)

    @activity.defn(name="deploy.rollback")
    async def rollback(self, ref: RunRef) -> RollbackResult:
        """Stop the run's release process and remove the release (compensation); nothing deployed is fine."""
        stopped = await asyncio.to_thread(self._stop, ref.run_id)
        if stopped:
            DEPLOYMENTS.labels("rolled_back").inc()
        return RollbackResult(stopped=stopped, detail="stopped" if stopped else "nothing deployed")

    def _stop(self, run_id: str) -> bool:
        state = self._state(run_id)
        child = self._children.pop(run_id, None)
        pid = state.pid if state else child.pid if child else None
        stopped = False
        if pid is not None and pid_alive(pid):
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while pid_alive(pid) and time.monotonic() < deadline:
                if child:
                    child.poll()
                time.sleep(0.05)
            if pid_alive(pid):
                _signal_group(pid, signal.SIGKILL)
            stopped = True
        if child:
            child.wait(timeout=STOP_GRACE_SECONDS)
        shutil.rmtree(self._run_dir(run_id), ignore_errors=True)
        return stopped

    def stop_all(self) -> None:
        """Stop every release this agent started in this process (the embedded stack's shutdown)."""
        for run_id in list(self._children):
            self._stop(run_id)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.deploy, self.verify, self.rollback]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
