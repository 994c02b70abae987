"""The deploy agent: a release runs what was built, is verified against the request, and a rollback brings back the
release it replaced.

A **service** (the module defines ``make_server(port, host)``) is served by its own generated code inside the
sandbox, behind the release host (:mod:`agents.release_server`): no secrets, a read-only system, its limits, and no
network but the one Unix socket the host hands it. A **library** is built into a wheel (by the worker, from the
files, without running them), kept as the release's artifact, and verified by installing it into a fresh venv in
the sandbox and importing it there.

Each run's deployment is recorded in a state file (its run id, project, environment, URL, release, artifact and the
host process's identity: pid *and* start time). A retried deploy finds the process it already started; a rollback,
in this process or another, stops exactly the process its own run started, never one that merely inherited a
recorded pid, and never another run's. A deploy that became healthy *supersedes* the active release of the same
project and environment (stopped, its record and artifact kept); rolling the new one back starts that one again on
its port. Only the release just before is kept.

Release hosts get a clean environment (no secrets) and die with the worker that started them (and their sandboxes
with them); the clean stop of the worker halts them but keeps their records, and the next worker
:meth:`DeployAgent.restore` s them: a release still running is adopted, an active one that stopped is started again
from its artifact on its port.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import re
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from prometheus_client import Counter
from pydantic import BaseModel
from temporalio import activity

from agents.acceptance import (
    ACCEPTANCE_DIR,
    describe_example,
    describe_expected,
    verdict,
    write_acceptance,
)
from agents.errors import DEPLOYMENT_FAILURE, INVALID_REQUEST, UNSAFE_ARTIFACT, failure
from agents.models import (
    Acceptance,
    AcceptanceExample,
    DeployInput,
    Deployment,
    RollbackResult,
    RunRef,
    VerifyInput,
    VerifyResult,
)
from agents.processes import ProcessIdentity, child_env, die_with_parent, signal_group, start_time
from agents.pytest_runs import PYTEST_ENV, PYTEST_INI, pytest_argv, read_reports
from agents.release_server import ORIGIN_HEADER, RELEASE_HEADER
from agents.sandbox import SANDBOX_PATH, Sandbox
from agents.workspace import Workspaces, copy_files, remove_tree, run_dir_name

DEPLOYMENTS = Counter("quantum_agent_deployments_total", "Deployments started and rolled back", ["action"])
START_TIMEOUT_SECONDS = 15.0
STOP_GRACE_SECONDS = 5.0
VERIFY_TIMEOUT_SECONDS = 120.0
HTTP_SECONDS = 30.0
MAX_BODY_BYTES = 1024 * 1024
MAX_SHOWN_CHARS = 300
RECORD_FILE = "deployment.json"
Kind = Literal["service", "library"]
State = Literal["active", "superseded", "stopped"]


class Probe(BaseModel):
    """What one request to a release got back: status (None: nothing answered), its headers of ours, its body."""

    status: int | None = None
    release: str | None = None
    origin: str | None = None
    body: bytes = b""


def request(url: str, method: str = "GET", path: str = "/healthz", body: Any = ..., timeout: float = 3.0) -> Probe:
    """Send one request to the release at ``url`` (our own loopback URL); the answer, bounded."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    data, headers = None, {}
    if body is not ...:
        data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return Probe(
            status=response.status,
            release=response.getheader(RELEASE_HEADER),
            origin=response.getheader(ORIGIN_HEADER),
            body=response.read(MAX_BODY_BYTES + 1),
        )
    except (OSError, http.client.HTTPException):
        return Probe()
    finally:
        connection.close()


def get_health(url: str, timeout: float = 3.0) -> tuple[int | None, dict[str, Any]]:
    """GET ``url``/healthz: (status code, JSON body); (None, {}) when nothing answers."""
    probe = request(url, timeout=timeout)
    try:
        body = json.loads(probe.body or b"{}")
    except ValueError:
        body = {}
    return probe.status, body if isinstance(body, dict) else {}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its parent counts as gone)."""
    identity = ProcessIdentity.of(pid)
    return identity is not None and identity.alive()


class ReleaseRecord(BaseModel):
    """What the state file keeps of a run's deployment."""

    deployment: Deployment
    process: ProcessIdentity
    root: str
    project: str = ""
    environment: str = ""
    state: State = "active"
    superseded_by: str | None = None


# --- the artifact -----------------------------------------------------------------------------------------------


def find_module(src: Path, module: str | None) -> str:
    """The module to release: ``module`` when given (it must be there), else the only one under ``src``."""
    found = sorted(
        {p.stem for p in src.glob("*.py") if p.is_file() and not p.is_symlink()}
        | {p.parent.name for p in src.glob("*/__init__.py") if p.is_file() and not p.is_symlink()}
    )
    if module is not None:
        if module.split(".")[0] not in found:
            raise failure(INVALID_REQUEST, f"the code has no module {module!r} to release")
        return module
    if len(found) != 1:
        raise failure(INVALID_REQUEST, f"cannot tell which module to release among {found[:10]}")
    return found[0]


def defines_make_server(src: Path, module: str) -> bool:
    """Whether ``module`` binds ``make_server`` at its top level (read as text, never run)."""
    top = module.split(".")[0]
    path = src / f"{top}.py" if (src / f"{top}.py").is_file() else src / top / "__init__.py"
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "make_server":
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == "make_server" for a in node.names):
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "make_server" for t in node.targets
        ):
            return True
    return False


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(src: Path, module: str, project: str, release: str, dist: Path) -> Path:
    """A pure-Python wheel of the files under ``src`` (standard library only; the code is read, never run)."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", project or module).strip("_").lower() or "release"
    local = re.sub(r"[^a-z0-9]", "", release.lower())[:12] or "0"
    version = f"1.0.0+r{local}"
    info = f"{name}-{version}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    wheel = dist / f"{name}-{version}-py3-none-any.whl"
    files = {p.relative_to(src).as_posix(): p.read_bytes() for p in sorted(src.rglob("*.py")) if p.is_file()}
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: quantum-deploy\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{info}/top_level.txt"] = f"{module.split('.')[0]}\n".encode()
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            entry = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            zf.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    return wheel


# --- JSON as the acceptance runner compares it -------------------------------------------------------------------


def same(value: Any, expected: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, but ``1`` is ``1.0`` (as :mod:`agents.acceptance_runner` compares)."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(value, (int, float)) and isinstance(expected, (int, float)):
        return value == expected
    if isinstance(value, list) and isinstance(expected, list):
        return len(value) == len(expected) and all(same(v, e) for v, e in zip(value, expected, strict=True))
    if isinstance(value, dict) and isinstance(expected, dict):
        return value.keys() == expected.keys() and all(same(value[k], expected[k]) for k in value)
    if value is None or expected is None:
        return value is None and expected is None
    return isinstance(value, str) and isinstance(expected, str) and value == expected


def _shown(text: str) -> str:
    flat = "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text[: MAX_SHOWN_CHARS * 2])
    return flat if len(flat) <= MAX_SHOWN_CHARS else flat[: MAX_SHOWN_CHARS - 1] + "…"


def check_http_example(url: str, index: int, example: AcceptanceExample) -> str | None:
    """Send an HTTP example to the live release; None when it got what it expects, else what went wrong."""
    assert example.http is not None
    call = example.http
    body = call.body if "body" in call.model_fields_set else ...
    got = request(url, call.method, call.path, body, timeout=HTTP_SECONDS)
    wanted = f", expected {describe_expected(example)}"
    head = f"example {index}: {describe_example(example)}"
    if got.status is None:
        return f"{head} was not answered by the release{wanted}"
    try:
        answer: Any = json.loads(got.body)
        carried, shown = True, repr(answer)
    except (ValueError, RecursionError):
        answer, carried, shown = None, False, f"with a body that is not JSON: {got.body[:200]!r}"
    if got.status != example.status or (
        "expect_json" in example.model_fields_set and (not carried or not same(answer, example.expect_json))
    ):
        return f"{head} answered {got.status} {_shown(shown)}{wanted}"
    return None


class DeployAgent:
    """Starts each run's release, verifies it against the request, and rolls it back to the one it replaced."""

    def __init__(
        self, workspaces: Workspaces, state_dir: Path, host: str = "127.0.0.1", sandbox: Sandbox | None = None
    ) -> None:
        self.workspaces = workspaces
        self.state_dir = state_dir
        self.host = host
        self.sandbox = sandbox or Sandbox()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._adopted: set[str] = set()
        self._lock = asyncio.Lock()

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

    def records(self) -> list[ReleaseRecord]:
        """Every readable record kept in its own run's place."""
        found = []
        for path in sorted(self.state_dir.glob(f"*/{RECORD_FILE}")) if self.state_dir.is_dir() else []:
            if path.is_symlink():
                continue
            try:
                record = ReleaseRecord.model_validate_json(path.read_text())
            except (OSError, ValueError):
                continue
            if path.parent == self._run_dir(record.deployment.run_id):
                found.append(record)
        return found

    # --- deploy ------------------------------------------------------------------------------------------------

    @activity.defn(name="deploy.deploy")
    async def deploy(self, inp: DeployInput) -> Deployment:
        """Release the run's code: build the artifact, start the release, wait until it answers, supersede the
        release of the same project and environment."""
        async with self._lock:
            current = self._record(inp.run_id)
            if current and current.deployment.release == inp.release and current.process.alive():
                probe = await asyncio.to_thread(request, current.deployment.url)
                if probe.release == inp.release and probe.origin is not None:
                    await asyncio.to_thread(self._supersede, current)
                    return current.deployment
            if current:
                await asyncio.to_thread(self._stop_process, inp.run_id, current)
            deployment = await self._start(inp)
            record = self._record(inp.run_id)
            if record is not None:
                await asyncio.to_thread(self._supersede, record)
            return deployment

    async def _start(self, inp: DeployInput) -> Deployment:
        """Build and start the release and wait for it; on any failure or a cancellation, stop what was started."""
        src = self.workspaces.src(inp.run_id)
        if not src.is_dir():
            raise failure(INVALID_REQUEST, f"no code to deploy for {inp.run_id}")
        run_dir = self._run_dir(inp.run_id)
        remove_tree(run_dir)
        try:
            artifact = run_dir / "artifact"
            (artifact / "src").mkdir(parents=True)
            await asyncio.to_thread(copy_files, src, artifact / "src")
            module = find_module(artifact / "src", inp.module)
            kind: Kind = "service" if defines_make_server(artifact / "src", module) else "library"
            wheel = None
            if kind == "library":
                built = await asyncio.to_thread(
                    build_wheel, artifact / "src", module, inp.project, inp.release, artifact / "dist"
                )
                wheel = str(built)
            proc, identity = self._spawn(inp.run_id, run_dir, inp.release, kind=kind, module=module, port=0)
            port = await self._wait_for_port(proc, run_dir)
            deployment = Deployment(
                run_id=inp.run_id,
                url=f"http://{self.host}:{port}",
                pid=proc.pid,
                port=port,
                release=inp.release,
                kind=kind,
                module=module,
                artifact=wheel,
            )
            record = ReleaseRecord(
                deployment=deployment,
                process=identity,
                root=str(run_dir / "release"),
                project=inp.project,
                environment=inp.environment,
            )
            self._save(record)
            await self._wait_ready(proc, deployment, run_dir)
        except BaseException:
            self._kill_child(inp.run_id)
            remove_tree(run_dir)
            raise
        DEPLOYMENTS.labels("deployed").inc()
        activity.logger.info("%s release %s of %s serving at %s", kind, inp.release[:12], inp.project, deployment.url)
        return deployment

    def _spawn(
        self, run_id: str, run_dir: Path, release: str, *, kind: Kind | None, module: str | None, port: int
    ) -> tuple[subprocess.Popen[bytes], ProcessIdentity]:
        """Start the release host (from the event loop's thread, so that it dies with this process)."""
        port_file = run_dir / "port"
        port_file.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "agents.release_server",
            "--kind",
            kind or "library",
            "--root",
            str(run_dir / "release"),
            "--release",
            release,
            "--host",
            self.host,
            "--port",
            str(port),
            "--port-file",
            str(port_file),
        ]
        if (run_dir / "artifact").is_dir():
            argv += ["--artifact", str(run_dir / "artifact")]
        if kind == "service":
            argv += ["--module", module or "", "--socket-dir", str(run_dir / "host")]
        with (run_dir / "release.log").open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own release host; the generated code runs in its sandbox
                argv,
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
                raise failure(DEPLOYMENT_FAILURE, f"the release did not start{self._log_tail(run_dir)}")
            await asyncio.sleep(0.05)
        return int(port_file.read_text())

    async def _wait_ready(self, proc: subprocess.Popen[bytes], deployment: Deployment, run_dir: Path) -> None:
        """Until the release answers through its host: the service itself (any status), or a library's host."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            probe = await asyncio.to_thread(request, deployment.url, "GET", "/healthz", ..., 5.0)
            if probe.origin == "service" or (deployment.kind != "service" and probe.status == 200):
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise failure(
                    DEPLOYMENT_FAILURE, f"the release at {deployment.url} never answered{self._log_tail(run_dir)}"
                )
            await asyncio.sleep(0.1)

    @staticmethod
    def _log_tail(run_dir: Path) -> str:
        """The end of what the release wrote (hostile text: bounded, made printable)."""
        texts = []
        for name in ("release.log", "service.log"):
            with contextlib.suppress(OSError):
                data = (run_dir / name).read_bytes()[-400:].decode(errors="replace").strip()
                if data:
                    texts.append(_shown(" | ".join(data.splitlines()[-3:])))
        return f": {' / '.join(texts)}" if texts else ""

    def _save(self, record: ReleaseRecord) -> None:
        path = self._run_dir(record.deployment.run_id) / RECORD_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(record.model_dump_json())
        tmp.replace(path)

    def _supersede(self, new: ReleaseRecord) -> None:
        """Stop the active release of ``new``'s project and environment, keeping it to come back on a rollback;
        drop the ones it had itself replaced (only the release just before is kept)."""
        if not new.project:
            return
        for other in self.records():
            run_id = other.deployment.run_id
            if run_id == new.deployment.run_id or (other.project, other.environment) != (new.project, new.environment):
                continue
            if other.state == "active":
                self._stop_process(run_id, other)
                self._save(other.model_copy(update={"state": "superseded", "superseded_by": new.deployment.run_id}))
            elif other.state == "superseded" and other.superseded_by != new.deployment.run_id:
                self._stop_process(run_id, other)
                remove_tree(self._run_dir(run_id))

    # --- verify ------------------------------------------------------------------------------------------------

    @activity.defn(name="deploy.verify")
    async def verify(self, inp: VerifyInput) -> VerifyResult:
        """Check the live release against the request: its HTTP examples against the release, the others against
        its artifact in the sandbox (a library's wheel installed in a fresh venv); with none, a smoke check
        (``GET /healthz`` answered 200 by the service; the library imported from its wheel)."""
        if not isinstance(inp, VerifyInput):  # a plain Deployment, as callers from before acceptance pass it
            inp = VerifyInput.model_validate(inp.model_dump())
        health = await asyncio.to_thread(request, inp.url)
        if health.status is None:
            return VerifyResult(healthy=False, detail=f"nothing answers at {inp.url}")
        matches = health.release == inp.release
        if not matches:
            shown = _shown(str(health.release))
            return VerifyResult(
                healthy=False,
                status_code=health.status,
                detail=f"serves release {shown!r}, expected {inp.release!r}",
            )
        examples = list(inp.acceptance.examples) if inp.acceptance else []
        http_examples = [(i, e) for i, e in enumerate(examples) if e.http is not None]
        failures: list[str] = []
        checked = 0
        if inp.kind == "service" and not http_examples and (health.status != 200 or health.origin != "service"):
            failures.append(f"GET /healthz answered {health.status}, expected 200 from the service")
        for index, example in http_examples:
            checked += 1
            if inp.kind != "service":
                failures.append(f"example {index}: {describe_example(example)}: a library serves no HTTP")
                continue
            problem = await asyncio.to_thread(check_http_example, inp.url, index, example)
            if problem:
                failures.append(problem)
        if inp.kind is not None:
            others = [(i, e) for i, e in enumerate(examples) if e.http is None]
            checked_more, more = await self._sandbox_checks(inp, others)
            checked += checked_more
            failures += more
        return VerifyResult(
            healthy=not failures,
            status_code=health.status,
            release_matches=True,
            detail=failures[0] if failures else "",
            checked=checked,
            failures=failures[:10],
        )

    async def _sandbox_checks(
        self, inp: VerifyInput, examples: list[tuple[int, AcceptanceExample]]
    ) -> tuple[int, list[str]]:
        """The call and expression examples (and the request's tests) against the release's artifact in a fresh
        sandbox; for a library, its wheel installed in a fresh venv there first (and imported, always)."""
        run_dir = self._run_dir(inp.run_id)
        artifact = run_dir / "artifact"
        module = inp.module or ""
        tests = inp.acceptance.tests if inp.acceptance else None
        if inp.kind == "service" and not examples and not tests:
            return 0, []
        scratch = run_dir / "verify" / uuid.uuid4().hex
        scratch.mkdir(parents=True)
        sandbox = self.sandbox
        inside = sandbox.workdir(scratch)
        try:
            if inp.kind == "library":
                wheel = Path(inp.artifact or "")
                if not wheel.is_file() or wheel.parent != artifact / "dist":
                    return 0, ["the release has no wheel to install"]
                (scratch / "dist").mkdir()
                (scratch / "dist" / wheel.name).write_bytes(wheel.read_bytes())
                venv = f"{inside}/venv"
                script = (
                    'set -e; "$1" -m venv --without-pip "$2"; '
                    '"$1" -m pip --python "$2/bin/python" install --no-index --no-deps --no-cache-dir '
                    '--disable-pip-version-check --quiet "$3"; '
                    '"$2/bin/python" -c "import importlib, sys; m = importlib.import_module(sys.argv[1]); '
                    'sys.exit(0 if (m.__file__ or \'\').startswith(sys.argv[2]) else 9)" "$4" "$2/"'
                )
                installed = await sandbox.run(
                    ["/bin/sh", "-c", script, "install", sys.executable, venv, f"{inside}/dist/{wheel.name}", module],
                    workspace=scratch,
                    timeout=VERIFY_TIMEOUT_SECONDS,
                )
                if installed.returncode != 0 or installed.timed_out:
                    why = _shown(" | ".join((installed.stderr or installed.stdout).strip().splitlines()[-3:]))
                    return 0, [f"the wheel {wheel.name} did not install and import in a fresh venv: {why}"]
                version = f"python{sys.version_info.major}.{sys.version_info.minor}"
                path = f"{venv}/lib/{version}/site-packages"
            else:
                copy_files(artifact / "src", scratch / "src")
                path = f"{inside}/src"
            if not examples and not tests:
                return 1, []
            sub = Acceptance(examples=[e for _, e in examples], tests=tests)
            write_acceptance(scratch, module, sub)
            (scratch / "pytest.ini").write_text(PYTEST_INI)
            (scratch / "reports").mkdir()
            started = time.monotonic()
            result = await sandbox.run(
                pytest_argv(sandbox, scratch, ACCEPTANCE_DIR, junit=True, options=("--import-mode=importlib",)),
                workspace=scratch,
                timeout=VERIFY_TIMEOUT_SECONDS,
                env={"PYTHONPATH": path, "PATH": SANDBOX_PATH, **PYTEST_ENV},
            )
            reports = await asyncio.to_thread(read_reports, scratch, coverage=False, cases=True)
            report = verdict(sub, result, reports, time.monotonic() - started)
        finally:
            remove_tree(run_dir / "verify")
        originals = [index for index, _ in examples]

        def renumber(text: str) -> str:  # the subset's numbers back to the request's
            match = re.match(r"^example (\d+):", text)
            if match and int(match[1]) < len(originals):
                return f"example {originals[int(match[1])]}:{text[match.end() :]}"
            return text

        problems = [renumber(f) for f in report.failures] + [f"cannot be trusted: {p}" for p in report.problems]
        if report.timed_out:
            problems.append("the acceptance checks did not finish within their time limit")
        return report.total, problems

    # --- rollback, stop ----------------------------------------------------------------------------------------

    @activity.defn(name="deploy.rollback")
    async def rollback(self, ref: RunRef) -> RollbackResult:
        """Stop the run's release and remove it (compensation), then start again the release it replaced; nothing
        deployed is fine, and a second rollback of the same run does nothing more."""
        async with self._lock:
            record = self._record(ref.run_id)
            stopped = await asyncio.to_thread(self._stop_process, ref.run_id, record)
            remove_tree(self._run_dir(ref.run_id))
            restored = await self._bring_back(ref.run_id)
        if stopped:
            DEPLOYMENTS.labels("rolled_back").inc()
        detail = "stopped" if stopped else "nothing deployed"
        if restored:
            detail += f"; {restored} serves again"
        return RollbackResult(stopped=stopped, detail=detail)

    async def _bring_back(self, run_id: str) -> str | None:
        """Start again the release that ``run_id`` superseded, on its port; its run id, or None."""
        for record in self.records():
            if record.state != "superseded" or record.superseded_by != run_id:
                continue
            previous = record.deployment.run_id
            run_dir = self._run_dir(previous)
            proc, identity = self._spawn(
                previous,
                run_dir,
                record.deployment.release,
                kind=record.deployment.kind,
                module=record.deployment.module,
                port=record.deployment.port,
            )
            revived = record.model_copy(update={"process": identity, "state": "active", "superseded_by": None})
            self._save(revived)
            try:
                await self._wait_for_port(proc, run_dir)
                await self._wait_ready(proc, record.deployment, run_dir)
            except Exception as err:  # the record stays active: the next worker starts it again
                activity.logger.warning("the release of %s did not come back: %s", previous, err)
            DEPLOYMENTS.labels("restored").inc()
            return previous
        return None

    def stop(self, run_id: str) -> bool:
        """Stop a release and keep its record as stopped (``quantum deployments stop``); whether it was running."""
        record = self._record(run_id)
        if record is None:
            raise failure(INVALID_REQUEST, f"no deployment of {run_id}")
        stopped = self._stop_process(run_id, record)
        self._save(record.model_copy(update={"state": "stopped"}))
        return stopped

    def _kill_child(self, run_id: str) -> None:
        """Stop a release this process started (a start that failed or was cancelled) and reap it."""
        child = self._children.pop(run_id, None)
        if child is not None:
            signal_group(child.pid, signal.SIGTERM)  # the host stops its sandbox and removes its cgroup
            try:
                child.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
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
        """Take over the recorded deployments: adopt a release still running, start an active one that stopped
        again from its artifact. Returns (run id, what was done) for each record. Call from the event loop's thread
        at start-up."""
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
            if record.state != "active":
                done.append((run_id, f"{record.state}, left stopped"))
                continue
            _, identity = self._spawn(
                run_id,
                path.parent,
                record.deployment.release,
                kind=record.deployment.kind,
                module=record.deployment.module,
                port=record.deployment.port,
            )
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
