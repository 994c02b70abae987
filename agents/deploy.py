"""The deploy agent: a release is a real process answering a health check, and a rollback really stops it.

Each run's deployment is recorded in a state file (its run id, URL, release and the process's identity: pid *and*
start time). A retried deploy finds the process it already started; a rollback, in this process or another, stops
exactly the process its own run started, never one that merely inherited a recorded pid, and never another run's.

Release processes get a clean environment (no secrets) and die with the worker that started them; the clean stop
of the worker halts them but keeps their records, and the next worker :meth:`DeployAgent.restore` s them: a
release still running is adopted, one that stopped is started again on its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from pydantic import BaseModel
from temporalio import activity

from agents.errors import DEPLOYMENT_FAILURE, INVALID_REQUEST, UNSAFE_ARTIFACT, failure
from agents.models import DeployInput, Deployment, RollbackResult, RunRef, VerifyResult
from agents.processes import ProcessIdentity, child_env, die_with_parent, signal_group, start_time
from agents.workspace import Workspaces, copy_files, remove_tree, run_dir_name

DEPLOYMENTS = Counter("quantum_agent_deployments_total", "Deployments started and rolled back", ["action"])
START_TIMEOUT_SECONDS = 15.0
STOP_GRACE_SECONDS = 5.0
RECORD_FILE = "deployment.json"


def get_health(url: str, timeout: float = 3.0) -> tuple[int | None, dict[str, Any]]:
    """GET ``url``/healthz: (status code, JSON body); (None, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as resp:  # noqa: S310 - our own loopback URL
            body = json.loads(resp.read(64 * 1024) or b"{}")
            return resp.status, body if isinstance(body, dict) else {}
    except urllib.error.HTTPError as err:
        return err.code, {}
    except (OSError, ValueError):
        return None, {}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its parent counts as gone)."""
    identity = ProcessIdentity.of(pid)
    return identity is not None and identity.alive()


class ReleaseRecord(BaseModel):
    """What the state file keeps of a run's deployment."""

    deployment: Deployment
    process: ProcessIdentity
    root: str


class DeployAgent:
    """Starts each run's release as a process of its own, verifies it, and stops it on rollback."""

    def __init__(self, workspaces: Workspaces, state_dir: Path, host: str = "127.0.0.1") -> None:
        self.workspaces = workspaces
        self.state_dir = state_dir
        self.host = host
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._adopted: set[str] = set()

    def _run_dir(self, run_id: str) -> Path:
        return self.state_dir / run_dir_name(run_id)

    def _record(self, run_id: str) -> ReleaseRecord | None:
        """The run's record; one that names another run is refused (it is not this run's to act on)."""
        path = self._run_dir(run_id) / RECORD_FILE
        if not path.is_file() or path.is_symlink():
            return None
        record = ReleaseRecord.model_validate_json(path.read_text())
        if record.deployment.run_id != run_id:
            raise failure(UNSAFE_ARTIFACT, f"the deployment record at {path} belongs to another run")
        return record

    @activity.defn(name="deploy.deploy")
    async def deploy(self, inp: DeployInput) -> Deployment:
        """Release the run's code: copy it, start the release process, wait until ``/healthz`` answers."""
        current = self._record(inp.run_id)
        if current and current.deployment.release == inp.release and current.process.alive():
            status, body = await asyncio.to_thread(get_health, current.deployment.url)
            if status == 200 and body.get("release") == inp.release:
                return current.deployment
        if current:
            await asyncio.to_thread(self._stop_process, inp.run_id, current)
        return await self._start(inp)

    async def _start(self, inp: DeployInput) -> Deployment:
        """Start the release and wait for it; on any failure or a cancellation, stop what was started."""
        src = self.workspaces.src(inp.run_id)
        if not src.is_dir():
            raise failure(INVALID_REQUEST, f"no code to deploy for {inp.run_id}")
        run_dir = self._run_dir(inp.run_id)
        release_dir = run_dir / "release"
        remove_tree(release_dir)
        release_dir.mkdir(parents=True)
        await asyncio.to_thread(copy_files, src, release_dir)
        proc, identity = self._spawn(inp.run_id, release_dir, inp.release, port=0)
        try:
            port = await self._wait_for_port(proc, run_dir)
            deployment = Deployment(
                run_id=inp.run_id, url=f"http://{self.host}:{port}", pid=proc.pid, port=port, release=inp.release
            )
            self._save(ReleaseRecord(deployment=deployment, process=identity, root=str(release_dir)))
            await self._wait_healthy(proc, deployment)
        except BaseException:
            self._kill_child(inp.run_id)
            remove_tree(run_dir)
            raise
        DEPLOYMENTS.labels("deployed").inc()
        activity.logger.info("release %s of %s serving at %s", inp.release[:12], inp.project, deployment.url)
        return deployment

    def _spawn(
        self, run_id: str, root: Path, release: str, *, port: int
    ) -> tuple[subprocess.Popen[bytes], ProcessIdentity]:
        """Start the release server (from the event loop's thread, so that it dies with this process)."""
        run_dir = root.parent
        port_file = run_dir / "port"
        port_file.unlink(missing_ok=True)
        with (run_dir / "release.log").open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own release server, not the generated code
                [
                    sys.executable,
                    "-m",
                    "agents.release_server",
                    "--root",
                    str(root),
                    "--release",
                    release,
                    "--host",
                    self.host,
                    "--port",
                    str(port),
                    "--port-file",
                    str(port_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=child_env(),
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        self._children[run_id] = proc
        identity = ProcessIdentity(pid=proc.pid, start=start_time(proc.pid) or 0)
        return proc, identity

    async def _wait_for_port(self, proc: subprocess.Popen[bytes], run_dir: Path) -> int:
        port_file = run_dir / "port"
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_file.is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise failure(DEPLOYMENT_FAILURE, f"release process did not start; see {run_dir / 'release.log'}")
            await asyncio.sleep(0.05)
        return int(port_file.read_text())

    async def _wait_healthy(self, proc: subprocess.Popen[bytes], deployment: Deployment) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while (await asyncio.to_thread(get_health, deployment.url, 1))[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise failure(DEPLOYMENT_FAILURE, f"release at {deployment.url} never became healthy")
            await asyncio.sleep(0.05)

    def _save(self, record: ReleaseRecord) -> None:
        path = self._run_dir(record.deployment.run_id) / RECORD_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(record.model_dump_json())
        tmp.replace(path)

    @activity.defn(name="deploy.verify")
    async def verify(self, deployment: Deployment) -> VerifyResult:
        """Ask the release for its health and check it serves the release that was deployed."""
        status, body = await asyncio.to_thread(get_health, deployment.url)
        if status is None:
            return VerifyResult(healthy=False, detail=f"nothing answers at {deployment.url}")
        matches = body.get("release") == deployment.release
        detail = "" if matches else f"serves release {str(body.get('release'))[:80]!r}, expected {deployment.release!r}"
        return VerifyResult(healthy=status == 200, status_code=status, release_matches=matches, detail=detail)

    @activity.defn(name="deploy.rollback")
    async def rollback(self, ref: RunRef) -> RollbackResult:
        """Stop the run's release process and remove the release (compensation); nothing deployed is fine."""
        record = self._record(ref.run_id)
        stopped = await asyncio.to_thread(self._stop_process, ref.run_id, record)
        remove_tree(self._run_dir(ref.run_id))
        if stopped:
            DEPLOYMENTS.labels("rolled_back").inc()
        return RollbackResult(stopped=stopped, detail="stopped" if stopped else "nothing deployed")

    def _kill_child(self, run_id: str) -> None:
        """Kill a release this process started (a start that failed or was cancelled) and reap it."""
        child = self._children.pop(run_id, None)
        if child is not None:
            signal_group(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=STOP_GRACE_SECONDS)

    def _stop_process(self, run_id: str, record: ReleaseRecord | None) -> bool:
        """Stop the run's release: only the very process its record names (pid and start time), then reap it."""
        child = self._children.pop(run_id, None)
        self._adopted.discard(run_id)
        identity = record.process if record else ProcessIdentity.of(child.pid) if child else None
        stopped = False
        if identity is not None and identity.alive():
            signal_group(identity.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while identity.alive() and time.monotonic() < deadline:
                if child:
                    child.poll()
                time.sleep(0.05)
            if identity.alive():
                signal_group(identity.pid, signal.SIGKILL)
            stopped = True
        if child:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=STOP_GRACE_SECONDS)
        return stopped

    def restore(self) -> list[tuple[str, str]]:
        """Take over the recorded deployments: adopt a release still running, start one that stopped again.

        Returns (run id, what was done) for each record. Call from the event loop's thread at start-up.
        """
        done: list[tuple[str, str]] = []
        for path in sorted(self.state_dir.glob(f"*/{RECORD_FILE}")) if self.state_dir.is_dir() else []:
            try:
                record = ReleaseRecord.model_validate_json(path.read_text())
            except ValueError:
                done.append((path.parent.name, "unreadable record, left alone"))
                continue
            run_id = record.deployment.run_id
            if path.parent != self._run_dir(run_id):
                done.append((run_id, "record in another run's place, left alone"))
                continue
            if record.process.alive():
                self._adopted.add(run_id)
                done.append((run_id, "adopted"))
                continue
            root = Path(record.root)
            _, identity = self._spawn(run_id, root, record.deployment.release, port=record.deployment.port)
            self._save(record.model_copy(update={"process": identity}))
            done.append((run_id, "started again"))
        return done

    def stop_all(self) -> None:
        """Halt every release this agent started or adopted, keeping their records for the next :meth:`restore`."""
        for run_id in sorted(set(self._children) | self._adopted):
            try:
                record = self._record(run_id)
            except Exception:  # a record that is not this run's: stop only our own child
                record = None
            self._stop_process(run_id, record)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.deploy, self.verify, self.rollback]
