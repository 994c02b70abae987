"""QInfra: declarative infrastructure with a state store, dependency order and compensation.

Resources (``kind``): a ``directory`` and a ``sqlite`` database file under ``<root>/<project>[@<environment>]/``,
a JetStream ``stream`` and a JetStream ``kv`` bucket on the bus, and a loopback ``port`` reserved for the project.
Each may name resources of the same request it needs (``depends_on``), or be a reference to a resource another
project declares (``from_project``).

**State.** Each project and environment has a state file, ``<root>/.state/<project>/<environment>/state.json``
(``.state`` cannot be a project: names start with a letter), written atomically (a temporary file renamed over
it). It records every resource with its spec, its address, the run that created it and the run that last changed
it, the set last declared, and a serial that every write increments. An exclusive ``flock`` on the ``lock`` file
beside it is held by every activity that reads or writes the state, so two runs never interleave; the kernel
releases it when its process dies, so a dead worker's lock never blocks. A plan records the serial it was made at;
provisioning refuses a plan made at an older serial (another run applied in between): plan again.

**Plan.** The diff of the desired set against the state: ``create``, ``update`` (in place: a stream's subjects,
sizes, ages; a bucket's history), ``replace`` (the kind or a stream's or bucket's storage changes), ``delete``
(recorded, no longer declared) and ``noop``. A resource that exists but is not in the state (someone else's) is
refused, as are a dependency cycle, a dependency on an undeclared name and a name declared twice: each a
non-retryable ``InvalidRequest`` naming the resources. Impact HIGH for prod, any delete or replace, any change to
a database, a stream or bucket over 1 GiB; MEDIUM when a stream or bucket is created or changed; else LOW.

**Provision** applies the plan in dependency order (``graphlib.TopologicalSorter``; deletes last, dependents
first), and records each change in the state as it happens and, before it happens, what the resource was in the
run's journal (``runs/<run>.json``): a retried provisioning skips what is done, and one already applied returns its
result. **Destroy** (the compensation) walks the journal backwards: what the run created is removed, what it
updated or replaced is put back to its previous spec, and what it deleted is put back: a directory or a database
file from the run's trash (deletes move them there), a stream or a bucket recreated empty with its previous spec
(their messages are gone), a port re-reserved. A resource changed since by another run is left as it is (the
result says so). Trash older than ``TRASH_RETENTION_SECONDS`` is purged by a later provisioning.

Runs from before the state store (no journal) are compensated as before, by their owner marks (a
``.quantum-owner`` file, a stream's description).

**Subjects.** A project's streams stay in its own subject space, ``qinfra.<project>`` in dev and
``qinfra.<project>.<environment>`` elsewhere (:func:`subject_scope`): a stream without ``subjects`` takes
``<scope>.<name>.>``, and explicit subjects must be the scope itself or lie under it, with no wildcard in its tokens
(``qinfra.>`` would take every project's messages, and NATS would then refuse every other project's stream). The
plan also refuses subjects that overlap those of a stream already on the server, naming that stream and its owner,
and subjects that overlap each other within the request, rather than leaving NATS to refuse them while provisioning.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import graphlib
import hashlib
import os
import re
import shutil
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, cast

import nats
from nats.js.api import KeyValueConfig, StorageType, StreamConfig, StreamInfo, StreamsListIterator
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity

from agents.errors import INVALID_REQUEST, PROVISION_FAILURE, failure, without_secrets
from agents.models import (
    Declared,
    DeclaredInput,
    DestroyResult,
    InfraPlan,
    PlanInfraInput,
    PlannedChange,
    ProvisionedResource,
    ProvisionResult,
    ResourceSpec,
    RunRef,
)
from agents.workspace import run_dir_name

OWNER_FILE = ".quantum-owner"
STREAM_PREFIX = "QINFRA_"
KV_STREAM_PREFIX = "KV_"
HIGH_STREAM_BYTES = 1024**3
STATE_DIR = ".state"
STATE_FILE = "state.json"
LOCK_FILE = "lock"
PORTS_LOCK_FILE = "ports.lock"
RUNS_DIR = "runs"
TRASH_DIR = "trash"
SQLITE_SUFFIX = ".sqlite3"
TRASH_RETENTION_SECONDS = 35 * 24 * 3600
"""Longer than a run can wait at its gates before its compensation may still need what it deleted."""
DEFAULT_LOCK_TIMEOUT = 60.0
_ENVIRONMENT = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
SUBJECT_ROOT = "qinfra"
MAX_SUBJECT_CHARS = 200
_SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_REPLACED_BY = {"stream": ("storage",), "kv": ("storage",)}

RESOURCES = Counter("quantum_agent_infra_resources_total", "Resources created or destroyed", ["kind", "action"])


def stream_name(project: str, name: str, environment: str = "dev") -> str:
    """The JetStream stream of ``project``'s resource ``name``: readable, and distinct for distinct triples.

    ``a`` + ``b_c`` and ``a_b`` + ``c`` read alike (``A_B_C``), so the name ends with a digest of the pair (of
    the triple outside ``dev``, whose names are those of before environments counted).
    """
    return _bus_name(project, name, environment)


def kv_bucket_name(project: str, name: str, environment: str = "dev") -> str:
    """The JetStream KV bucket of ``project``'s resource ``name`` (its stream is ``KV_<bucket>``)."""
    return _bus_name(project, name, environment)


def _bus_name(project: str, name: str, environment: str) -> str:
    whole = f"{project}/{name}" if environment == "dev" else f"{project}/{environment}/{name}"
    parts = f"{project}_{name}" if environment == "dev" else f"{project}_{environment}_{name}"
    readable = re.sub(r"[^A-Z0-9_]", "_", parts.upper())[:80]
    digest = hashlib.sha256(whole.encode()).hexdigest()[:10]
    return f"{STREAM_PREFIX}{readable}_{digest}"


def owner_mark(run_id: str) -> str:
    return f"quantum run {run_id}"


def subject_scope(project: str, environment: str = "dev") -> str:
    """The subject space of ``project``'s streams in ``environment``: ``qinfra.<project>`` in dev (as before
    environments counted), ``qinfra.<project>.<environment>`` elsewhere."""
    return f"{SUBJECT_ROOT}.{project}" if environment == "dev" else f"{SUBJECT_ROOT}.{project}.{environment}"


def subject_outside_scope(subject: str, scope: str) -> str | None:
    """Why ``subject`` may not be a subject of a stream in ``scope``, or None when it is ``scope`` or lies under it.

    Its tokens are plain (ASCII letters, digits, ``_``, ``-``), a ``*`` alone, or a ``>`` alone as the last; the
    tokens of ``scope`` open it literally, since a wildcard there would reach other projects' subjects.
    """
    if not subject or len(subject) > MAX_SUBJECT_CHARS:
        return f"must have 1 to {MAX_SUBJECT_CHARS} characters"
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token:
            return "has an empty token (a leading, trailing or doubled '.')"
        if token == ">" and index < len(tokens) - 1:
            return "has '>' before its last token"
        if token not in ("*", ">") and not _SUBJECT_TOKEN.fullmatch(token):
            return f"has the token {token[:40]!r}: letters, digits, '_' and '-', or '*' or a last '>' alone"
    head = scope.split(".")
    if tokens[: len(head)] != head:
        return f"lies outside the project's subjects: it must be {scope!r} or begin with {scope + '.'!r}"
    return None


def subjects_overlap(first: str, second: str) -> bool:
    """Whether some subject matches both patterns (NATS: ``*`` matches one token, a last ``>`` one or more)."""
    a, b = first.split("."), second.split(".")
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != y and "*" not in (x, y):
            return False
    return True


def _first_overlap(ours: list[str], theirs: list[str]) -> tuple[str, str] | None:
    return next(((a, b) for a in ours for b in theirs if subjects_overlap(a, b)), None)


def project_dir(root: Path, project: str, environment: str = "dev") -> Path:
    """Where a project's directories and databases live: ``<root>/<project>`` in dev (as before environments
    counted), ``<root>/<project>@<environment>`` elsewhere (``@`` is in no name, so no two meet)."""
    return root / (project if environment == "dev" else f"{project}@{environment}")


# --- the state -----------------------------------------------------------------------------------------------------


class _Stored(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Record(_Stored):
    """One resource as the state knows it."""

    kind: str
    name: str
    address: str
    spec: dict[str, Any] = Field(default_factory=dict, description="The attributes that matter for its kind.")
    depends_on: list[str] = Field(default_factory=list)
    port: int | None = None
    created_by: str
    updated_by: str
    created_at_ns: int = 0
    updated_at_ns: int = 0


class State(_Stored):
    version: int = 1
    project: str
    environment: str
    serial: int = 0
    written_by: str | None = None
    declared: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, Record] = Field(default_factory=dict)


class Journal(_Stored):
    """What one run did to a state, written before each change: enough to undo it."""

    run_id: str
    project: str
    environment: str
    status: Literal["applying", "applied", "compensated"] = "applying"
    declared_before: list[dict[str, Any]] = Field(default_factory=list)
    before: dict[str, Record | None] = Field(default_factory=dict, description="In the order first touched.")
    applied: list[str] = Field(default_factory=list, description="`action name`, in the order applied.")
    result: list[ProvisionedResource] = Field(default_factory=list)


def attributes(spec: ResourceSpec) -> dict[str, Any]:
    """What is compared between the desired and the recorded resource."""
    if spec.kind == "stream":
        return {
            "subjects": sorted(spec.subjects),
            "max_bytes": spec.max_bytes,
            "max_age_seconds": spec.max_age_seconds,
            "storage": spec.storage,
        }
    if spec.kind == "kv":
        return {
            "history": spec.history,
            "max_bytes": spec.max_bytes,
            "max_age_seconds": spec.max_age_seconds,
            "storage": spec.storage,
        }
    return {}


def dependency_order(specs: list[ResourceSpec]) -> list[str]:
    """The names of ``specs`` in an order where each comes after what it depends on (ties: as declared).

    Raises ``InvalidRequest`` for a name declared twice, a dependency on an undeclared name, or a cycle, naming
    the resources.
    """
    position: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.name in position:
            other = specs[position[spec.name]]
            raise failure(INVALID_REQUEST, f"{spec.name!r} is declared twice ({other.kind} and {spec.kind})")
        position[spec.name] = i
    missing = [f"{s.name} depends on {d}" for s in specs for d in s.depends_on if d not in position]
    if missing:
        raise failure(INVALID_REQUEST, f"missing dependencies: {'; '.join(missing)}, which are not declared")
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for spec in specs:
        sorter.add(spec.name, *spec.depends_on)
    try:
        sorter.prepare()
    except graphlib.CycleError as err:
        cycle = list(err.args[1])
        raise failure(INVALID_REQUEST, f"dependency cycle: {' -> '.join(cycle)}") from None
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def _removal_order(records: dict[str, Record], names: set[str]) -> list[str]:
    """``names`` with dependents first (the reverse of the recorded dependency order)."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name in sorted(names):
        sorter.add(name, *[d for d in records[name].depends_on if d in names])
    try:
        return list(reversed(list(sorter.static_order())))
    except graphlib.CycleError:  # a state from before dependencies: any order
        return sorted(names)


def _atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _now_ns() -> int:
    return time.time_ns()


class _Context:
    """One activity's view of one project's state, under its lock."""

    def __init__(self, agent: InfraAgent, project: str, environment: str, run_id: str) -> None:
        self.agent = agent
        self.project = project
        self.environment = environment
        self.run_id = run_id
        self.dir = agent.state_dir(project, environment)
        self.state = agent.load_state(project, environment)

    def save(self) -> None:
        self.state.serial += 1
        self.state.written_by = self.run_id
        _atomic_write(self.dir / STATE_FILE, self.state.model_dump_json(indent=1))

    def journal_path(self, run_id: str | None = None) -> Path:
        return self.dir / RUNS_DIR / f"{run_dir_name(run_id or self.run_id)}.json"

    def trash(self, name: str) -> Path:
        return self.dir / TRASH_DIR / run_dir_name(self.run_id) / name


class InfraAgent:
    """QInfra: resources under ``root`` and on the NATS at ``nats_url``, with their state under ``root/.state``."""

    def __init__(
        self,
        root: Path,
        nats_url: str,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        nats_credentials: str | None = None,
    ) -> None:
        self.root = root
        self.nats_url = nats_url
        self.nats_credentials = nats_credentials
        self.lock_timeout = lock_timeout

    # --- plumbing ------------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _jetstream(self) -> AsyncIterator[JetStreamContext]:
        try:
            nc = await nats.connect(
                servers=[s.strip() for s in self.nats_url.split(",")],
                connect_timeout=5,
                max_reconnect_attempts=1,
                allow_reconnect=False,
                user_credentials=self.nats_credentials,
            )
        except Exception as err:  # nats raises several unrelated types for an unreachable server
            where = without_secrets(self.nats_url)
            raise failure(PROVISION_FAILURE, f"NATS at {where} does not answer: {err}") from None
        try:
            yield nc.jetstream()
        finally:
            await nc.close()

    def state_dir(self, project: str, environment: str) -> Path:
        """Where the state of ``project`` in ``environment`` lives; both must be plain names (an activity's input is
        checked here whoever built it: nothing may lead outside the root)."""
        for what, name in (("project", project), ("environment", environment)):
            if not _ENVIRONMENT.fullmatch(name):
                raise failure(INVALID_REQUEST, f"{what} {name[:80]!r} is not a plain name")
        return self.root / STATE_DIR / project / environment

    def load_state(self, project: str, environment: str) -> State:
        path = self.state_dir(project, environment) / STATE_FILE
        if not path.is_file():
            return State(project=project, environment=environment)
        return State.model_validate_json(path.read_text(encoding="utf-8"))

    @asynccontextmanager
    async def _flock(self, path: Path, holder: str, what: str) -> AsyncIterator[None]:
        """An exclusive ``flock`` on ``path``: waited for up to ``lock_timeout`` seconds (then a retryable
        failure naming the holder); released when this block ends or its process dies."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        held = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
                        raise failure(PROVISION_FAILURE, f"{what} is locked by {held}") from None
                    await asyncio.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} for {holder}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    @asynccontextmanager
    async def _locked(self, project: str, environment: str, run_id: str) -> AsyncIterator[_Context]:
        directory = self.state_dir(project, environment)
        async with self._flock(directory / LOCK_FILE, run_id, f"the state of {project}/{environment}"):
            yield _Context(self, project, environment, run_id)

    def _address(self, project: str, environment: str, spec: ResourceSpec) -> str:
        if spec.kind == "directory":
            return str(project_dir(self.root, project, environment) / spec.name)
        if spec.kind == "sqlite":
            return str(project_dir(self.root, project, environment) / f"{spec.name}{SQLITE_SUFFIX}")
        if spec.kind == "stream":
            return stream_name(project, spec.name, environment)
        if spec.kind == "kv":
            return kv_bucket_name(project, spec.name, environment)
        return "127.0.0.1:(allocated when provisioned)"

    # --- what exists ---------------------------------------------------------------------------------------------

    async def _owner(self, js: JetStreamContext, kind: str, address: str) -> tuple[bool, str | None]:
        """Whether the resource at ``address`` exists, and the owner mark it carries."""
        if kind == "directory":
            path = Path(address)
            mark = path / OWNER_FILE
            return path.exists(), (mark.read_text().strip() if mark.is_file() else None)
        if kind == "sqlite":
            return await asyncio.to_thread(_sqlite_owner, Path(address))
        if kind in ("stream", "kv"):
            stream = address if kind == "stream" else KV_STREAM_PREFIX + address
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                return False, None
            return True, info.config.description
        return False, None  # a port exists only in the state

    # --- plan ----------------------------------------------------------------------------------------------------

    @activity.defn(name="infra.plan")
    async def plan(self, inp: PlanInfraInput) -> InfraPlan:
        """The diff of the desired resources against the state, in the order provisioning applies it, and how much
        it could hurt (impact LOW, MEDIUM or HIGH, with the reasons)."""
        order = dependency_order(inp.resources)
        by_name = {spec.name: spec for spec in inp.resources}
        changes: list[PlannedChange] = []
        reasons: list[str] = []
        references: list[str] = []
        mark = owner_mark(inp.run_id)
        async with self._locked(inp.project, inp.environment, inp.run_id) as ctx, self._jetstream() as js:
            records = ctx.state.resources
            await self._check_subjects(js, inp, records)
            for name in order:
                spec = by_name[name]
                if spec.from_project is not None:
                    references.append(self._reference(spec, inp.environment))
                    continue
                rec = records.get(name)
                address = rec.address if rec is not None and rec.kind == spec.kind else None
                address = address or self._address(inp.project, inp.environment, spec)
                exists, owner = await self._owner(js, spec.kind, address)
                change = PlannedChange(action="noop", kind=spec.kind, name=name, address=address)
                if rec is None:
                    if exists and owner != mark:
                        raise failure(
                            INVALID_REQUEST,
                            f"{spec.kind} {name} exists at {address} but is not in the state of "
                            f"{inp.project}/{inp.environment} ({owner or 'no owner'}): it is not this run's to take",
                        )
                    change.action = "create"
                elif rec.kind != spec.kind:
                    change.action, change.detail = "replace", f"kind {rec.kind} becomes {spec.kind}"
                else:
                    wanted = attributes(spec)
                    differ = [k for k in wanted if rec.spec.get(k) != wanted[k]]
                    detail = ", ".join(f"{k} {rec.spec.get(k)!r} -> {wanted[k]!r}" for k in differ)
                    if any(k in _REPLACED_BY.get(spec.kind, ()) for k in differ):
                        change.action, change.detail = "replace", detail
                    elif differ:
                        change.action, change.detail = "update", detail
                    elif spec.kind != "port" and not exists:
                        change.action, change.detail = "create", "recorded in the state but missing"
                changes.append(change)
                reasons.extend(_risks(change, spec))
            gone = set(records) - set(by_name)
            for name in _removal_order(records, gone):
                rec = records[name]
                change = PlannedChange(action="delete", kind=rec.kind, name=name, address=rec.address)
                change.detail = "no longer declared" + (": its data goes" if rec.kind == "sqlite" else "")
                changes.append(change)
                reasons.append(f"delete {rec.kind} {name}" + (" (a database)" if rec.kind == "sqlite" else ""))
            serial = ctx.state.serial
        if inp.environment == "prod":
            reasons.insert(0, "environment is prod")
        touched = [c for c in changes if c.action != "noop"]
        impact = "HIGH" if reasons else "MEDIUM" if any(c.kind in ("stream", "kv") for c in touched) else "LOW"
        return InfraPlan(
            run_id=inp.run_id,
            project=inp.project,
            environment=inp.environment,
            changes=changes,
            resources=inp.resources,
            impact=impact,
            reasons=reasons,
            references=references,
            state_serial=serial,
        )

    async def _check_subjects(self, js: JetStreamContext, inp: PlanInfraInput, records: dict[str, Record]) -> None:
        """Refuse the request's streams whose subjects lie outside the project's scope, overlap each other, or
        overlap those of a stream already on the server (other than the one each stream is)."""
        _refuse_outside_scope(inp.project, inp.environment, inp.resources)
        scope = subject_scope(inp.project, inp.environment)
        wanted: dict[str, tuple[str, list[str]]] = {}
        for spec in inp.resources:
            if spec.kind != "stream" or spec.from_project is not None:
                continue
            rec = records.get(spec.name)
            address = rec.address if rec is not None and rec.kind == "stream" else None
            address = address or self._address(inp.project, inp.environment, spec)
            wanted[spec.name] = (address, spec.subjects or [f"{scope}.{spec.name}.>"])
        _refuse_overlaps_within(wanted)
        if not wanted:
            return
        ours = {address for address, _ in wanted.values()}
        for info in await _all_streams(js):
            name = info.config.name or ""
            if name in ours:
                continue
            for resource, (_, subjects) in wanted.items():
                clash = _first_overlap(subjects, info.config.subjects or [])
                if clash is not None:
                    raise failure(
                        INVALID_REQUEST,
                        f"stream {resource}: its subject {clash[0]!r} overlaps {clash[1]!r} of the existing stream "
                        f"{name} ({self._stream_owner(name, info.config.description)}): NATS would refuse it",
                    )

    def _stream_owner(self, name: str, description: str | None) -> str:
        """Who owns the stream ``name``: the project whose state records it, and the mark in its description."""
        mark = f"marked {description[:120]!r}" if description else "no owner mark"
        for path in sorted((self.root / STATE_DIR).glob(f"*/*/{STATE_FILE}")):
            state = State.model_validate_json(path.read_text(encoding="utf-8"))
            if any(r.kind == "stream" and r.address == name for r in state.resources.values()):
                return f"project {state.project} in {state.environment}, {mark}"
        return mark

    def _reference(self, spec: ResourceSpec, environment: str) -> str:
        """``project/name address`` of a resource another project declares; refused when it has no such one."""
        project = spec.from_project or ""
        rec = self.load_state(project, environment).resources.get(spec.name)
        if rec is None or rec.kind != spec.kind:
            raise failure(
                INVALID_REQUEST,
                f"{spec.kind} {spec.name} of project {project} is not provisioned in {environment}",
            )
        return f"{project}/{spec.name} {rec.address}"

    @activity.defn(name="infra.declared")
    async def declared(self, inp: DeclaredInput) -> Declared:
        """What ``project`` last provisioned in ``environment`` (for a run that depends on it); refused when none."""
        state = self.load_state(inp.project, inp.environment)
        if not state.declared:
            raise failure(
                INVALID_REQUEST, f"project {inp.project} has no provisioned infrastructure in {inp.environment}"
            )
        return Declared(resources=[ResourceSpec.model_validate(d) for d in state.declared])

    # --- provision -----------------------------------------------------------------------------------------------

    @activity.defn(name="infra.provision")
    async def provision(self, plan: InfraPlan) -> ProvisionResult:
        """Apply the plan in its order, recording each change; a retry skips what is done."""
        specs = {spec.name: spec for spec in plan.resources}
        _refuse_outside_scope(plan.project, plan.environment, plan.resources)
        async with self._locked(plan.project, plan.environment, plan.run_id) as ctx, self._jetstream() as js:
            journal_path = ctx.journal_path()
            journal = (
                Journal.model_validate_json(journal_path.read_text(encoding="utf-8"))
                if journal_path.is_file()
                else None
            )
            if journal is not None and journal.status != "applying":
                return ProvisionResult(resources=journal.result)
            state = ctx.state
            if plan.state_serial is not None and state.serial != plan.state_serial and state.written_by != plan.run_id:
                raise failure(
                    INVALID_REQUEST,
                    f"the state of {plan.project}/{plan.environment} changed since this plan (serial "
                    f"{plan.state_serial}, now {state.serial}, last written by {state.written_by}): plan again",
                )
            if journal is None:
                journal = Journal(
                    run_id=plan.run_id,
                    project=plan.project,
                    environment=plan.environment,
                    declared_before=state.declared,
                )
                _atomic_write(journal_path, journal.model_dump_json(indent=1))
            await asyncio.to_thread(self._purge_trash, ctx)
            done: list[ProvisionedResource] = []
            for change in plan.changes:
                spec = specs.get(change.name)
                if change.action != "noop" and not self._is_done(change, spec, state, plan.run_id):
                    if change.name not in journal.before:
                        rec = state.resources.get(change.name)
                        journal.before[change.name] = rec.model_copy(deep=True) if rec else None
                        _atomic_write(journal_path, journal.model_dump_json(indent=1))
                    await self._apply(js, ctx, change, spec)
                    journal.applied.append(f"{change.action} {change.name}")
                rec = state.resources.get(change.name)
                address = rec.address if rec is not None and change.action != "delete" else change.address
                done.append(
                    ProvisionedResource(kind=change.kind, name=change.name, address=address, action=change.action)
                )
            state.declared = [spec.model_dump() for spec in plan.resources]
            ctx.save()
            journal.status, journal.result = "applied", done
            _atomic_write(journal_path, journal.model_dump_json(indent=1))
        return ProvisionResult(resources=done)

    @staticmethod
    def _is_done(change: PlannedChange, spec: ResourceSpec | None, state: State, run_id: str) -> bool:
        rec = state.resources.get(change.name)
        if change.action == "delete":
            return rec is None
        return (
            rec is not None
            and spec is not None
            and rec.updated_by == run_id
            and rec.kind == spec.kind
            and rec.spec == attributes(spec)
        )

    async def _apply(
        self, js: JetStreamContext, ctx: _Context, change: PlannedChange, spec: ResourceSpec | None
    ) -> None:
        """Carry out one change and record it in the state."""
        records = ctx.state.resources
        old = records.get(change.name)
        now = _now_ns()
        if change.action == "delete":
            if old is not None:
                await self._remove(js, ctx, old, trash=True)
                del records[change.name]
                ctx.save()
            return
        assert spec is not None
        if change.action == "replace" and old is not None:
            await self._remove(js, ctx, old, trash=True)
            del records[change.name]
            ctx.save()
            old = None
        if change.action == "update" and old is not None:
            rec = old.model_copy(update={"spec": attributes(spec), "depends_on": list(spec.depends_on)})
            rec.updated_by, rec.updated_at_ns = ctx.run_id, now
            await self._update(js, ctx, rec)
        else:
            rec = Record(
                kind=spec.kind,
                name=spec.name,
                address=self._address(ctx.project, ctx.environment, spec),
                spec=attributes(spec),
                depends_on=list(spec.depends_on),
                created_by=old.created_by if old is not None else ctx.run_id,
                updated_by=ctx.run_id,
                created_at_ns=old.created_at_ns if old is not None else now,
                updated_at_ns=now,
                port=old.port if old is not None else None,
            )
            if spec.kind == "port":
                async with self._flock(self.root / STATE_DIR / PORTS_LOCK_FILE, ctx.run_id, "the port registry"):
                    rec.port = rec.port or self._free_port(ctx)
                    rec.address = f"127.0.0.1:{rec.port}"
                    records[rec.name] = rec
                    ctx.save()  # under the registry's lock: no other resource can take the port
                RESOURCES.labels(rec.kind, "created").inc()
                return
            await self._create(js, ctx, rec)
        records[rec.name] = rec
        ctx.save()

    # --- the effects, one kind at a time -------------------------------------------------------------------------

    async def _create(self, js: JetStreamContext, ctx: _Context, rec: Record) -> None:
        """Create ``rec`` marked with its creator; one that already carries that mark is kept as it is."""
        mark = owner_mark(rec.created_by)
        exists, owner = await self._owner(js, rec.kind, rec.address)
        if exists and owner != mark:
            raise failure(INVALID_REQUEST, f"{rec.kind} {rec.address} exists and belongs to someone else")
        if not exists:
            if rec.kind == "directory":
                await asyncio.to_thread(_make_directory, Path(rec.address), mark)
            elif rec.kind == "sqlite":
                await asyncio.to_thread(_make_sqlite, Path(rec.address), mark)
            elif rec.kind == "stream":
                await self._add_stream(js, ctx, rec, mark)
            elif rec.kind == "kv":
                await self._add_kv(js, rec, mark)
            RESOURCES.labels(rec.kind, "created").inc()

    async def _update(self, js: JetStreamContext, ctx: _Context, rec: Record) -> None:
        """Change ``rec`` in place to its spec (only streams and buckets have attributes to change)."""
        if rec.kind not in ("stream", "kv"):
            return
        stream = rec.address if rec.kind == "stream" else KV_STREAM_PREFIX + rec.address
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            await self._create(js, ctx, rec)
            return
        config = info.config
        config.max_bytes = rec.spec["max_bytes"]
        config.max_age = float(rec.spec["max_age_seconds"])
        if rec.kind == "stream":
            config.subjects = self._subjects(ctx, rec)
        else:
            config.max_msgs_per_subject = rec.spec["history"]
        try:
            await js.update_stream(config)
        except nats.js.errors.BadRequestError as err:
            raise failure(INVALID_REQUEST, f"{rec.kind} {rec.address} refused by NATS: {err.description}") from None
        RESOURCES.labels(rec.kind, "updated").inc()

    async def _remove(self, js: JetStreamContext, ctx: _Context, rec: Record, *, trash: bool) -> None:
        """Remove ``rec`` if it is still the one its creator made; files and directories go to the run's trash
        when ``trash`` (a compensation puts them back)."""
        exists, owner = await self._owner(js, rec.kind, rec.address)
        if not exists:
            return
        if rec.kind != "port" and owner != owner_mark(rec.created_by):
            raise failure(INVALID_REQUEST, f"{rec.kind} {rec.address} is no longer the one the state records")
        if rec.kind in ("directory", "sqlite"):
            path = Path(rec.address)
            if trash:
                target = ctx.trash(rec.name)
                await asyncio.to_thread(_move_aside, path, target, rec.kind)
            else:
                await asyncio.to_thread(_remove_files, path, rec.kind)
        elif rec.kind == "stream":
            await js.delete_stream(rec.address)
        elif rec.kind == "kv":
            await js.delete_key_value(rec.address)
        RESOURCES.labels(rec.kind, "destroyed").inc()

    def _subjects(self, ctx: _Context, rec: Record) -> list[str]:
        subjects: list[str] = rec.spec.get("subjects") or []
        if subjects:
            return subjects
        return [f"{subject_scope(ctx.project, ctx.environment)}.{rec.name}.>"]

    async def _add_stream(self, js: JetStreamContext, ctx: _Context, rec: Record, mark: str) -> None:
        config = StreamConfig(
            name=rec.address,
            subjects=self._subjects(ctx, rec),
            storage=StorageType.MEMORY if rec.spec.get("storage") == "memory" else StorageType.FILE,
            max_bytes=rec.spec["max_bytes"],
            max_age=float(rec.spec["max_age_seconds"]),
            description=mark,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as err:
            raise failure(INVALID_REQUEST, f"stream {rec.address} refused by NATS: {err.description}") from None
        except Exception as err:
            raise failure(PROVISION_FAILURE, f"stream {rec.address} could not be created: {err}") from None

    async def _add_kv(self, js: JetStreamContext, rec: Record, mark: str) -> None:
        ttl = float(rec.spec["max_age_seconds"]) or None
        config = KeyValueConfig(
            bucket=rec.address,
            description=mark,
            history=rec.spec["history"],
            ttl=ttl,
            max_bytes=rec.spec["max_bytes"],
            storage=StorageType.MEMORY if rec.spec.get("storage") == "memory" else StorageType.FILE,
        )
        try:
            await js.create_key_value(config)
        except nats.js.errors.BadRequestError as err:
            raise failure(INVALID_REQUEST, f"kv {rec.address} refused by NATS: {err.description}") from None
        except Exception as err:
            raise failure(PROVISION_FAILURE, f"kv {rec.address} could not be created: {err}") from None

    def _free_port(self, ctx: _Context) -> int:
        """A loopback port that is free now and that no resource of any project's state holds (call under the
        port registry's lock)."""
        taken = self._ports_in_use(ctx)
        for _ in range(100):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in taken:
                return port
        raise failure(PROVISION_FAILURE, "no free loopback port")

    @staticmethod
    def _purge_trash(ctx: _Context) -> None:
        trash = ctx.dir / TRASH_DIR
        if not trash.is_dir():
            return
        cutoff = time.time() - TRASH_RETENTION_SECONDS
        for entry in trash.iterdir():
            if entry.lstat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)

    # --- destroy (the compensation) ------------------------------------------------------------------------------

    @activity.defn(name="infra.destroy")
    async def destroy(self, ref: RunRef) -> DestroyResult:
        """Put every state this run changed back as it was before the run, newest change first; nothing to undo
        is fine, and so is running it again."""
        key = f"{run_dir_name(ref.run_id)}.json"
        journals = sorted((self.root / STATE_DIR).glob(f"*/*/{RUNS_DIR}/{key}")) if self.root.is_dir() else []
        if not journals:
            return await self._destroy_by_marks(ref.run_id)
        result = DestroyResult()
        for path in journals:
            journal = Journal.model_validate_json(path.read_text(encoding="utf-8"))
            if journal.run_id != ref.run_id or journal.status == "compensated":
                continue
            async with (
                self._locked(journal.project, journal.environment, ref.run_id) as ctx,
                self._jetstream() as js,
            ):
                for name in reversed(journal.before):
                    await self._restore(js, ctx, name, journal.before[name], result)
                if ctx.state.written_by == ref.run_id:
                    ctx.state.declared = journal.declared_before
                    ctx.save()
                journal.status = "compensated"
                _atomic_write(path, journal.model_dump_json(indent=1))
        return result

    async def _restore(
        self, js: JetStreamContext, ctx: _Context, name: str, before: Record | None, result: DestroyResult
    ) -> None:
        records = ctx.state.resources
        current = records.get(name)
        if current == before:
            return
        if current is not None and current.updated_by != ctx.run_id:
            result.notes.append(f"{current.kind} {name} was changed since by {current.updated_by}: left as it is")
            return
        if current is not None and (
            before is None
            or before.kind != current.kind
            or before.address != current.address
            or _replaced(before, current)
        ):
            await self._remove(js, ctx, current, trash=False)
            del records[name]
            ctx.save()
            result.removed.append(current.address)
            current = None
        if before is None:
            return
        if current is not None:  # updated in place: back to the previous spec
            await self._update(js, ctx, before)
        elif before.kind in ("directory", "sqlite") and ctx.trash(name).exists():
            await asyncio.to_thread(_move_back, ctx.trash(name), Path(before.address), before.kind)
        elif before.kind == "port":
            async with self._flock(self.root / STATE_DIR / PORTS_LOCK_FILE, ctx.run_id, "the port registry"):
                if before.port in self._ports_in_use(ctx):
                    before = before.model_copy(update={"port": self._free_port(ctx)})
                    before.address = f"127.0.0.1:{before.port}"
                    result.notes.append(f"port {name}: its port was taken meanwhile; reserved {before.address}")
                records[name] = before
                ctx.save()
            result.restored.append(before.address)
            return
        else:
            lost = "its messages are gone" if before.kind in ("stream", "kv") else "its trash copy is gone"
            result.notes.append(f"{before.kind} {name} was recreated empty: {lost}")
            await self._create(js, ctx, before)
        records[name] = before
        ctx.save()
        result.restored.append(before.address)

    def _ports_in_use(self, ctx: _Context) -> set[int]:
        """Every port a resource holds, in any project's state (this one's as it is in memory)."""
        taken = {r.port for r in ctx.state.resources.values() if r.port is not None}
        for path in (self.root / STATE_DIR).glob(f"*/*/{STATE_FILE}"):
            if (path.parent.parent.name, path.parent.name) != (ctx.project, ctx.environment):
                state = State.model_validate_json(path.read_text(encoding="utf-8"))
                taken |= {r.port for r in state.resources.values() if r.port is not None}
        return taken

    async def _destroy_by_marks(self, run_id: str) -> DestroyResult:
        """A run from before the state store: remove every directory and stream carrying its mark."""
        mark = owner_mark(run_id)
        removed: list[str] = []
        for owner in sorted(self.root.glob(f"*/*/{OWNER_FILE}")) if self.root.is_dir() else []:
            if owner.parent.parent.name != STATE_DIR and owner.read_text().strip() == mark:
                await asyncio.to_thread(shutil.rmtree, owner.parent)
                removed.append(str(owner.parent))
                RESOURCES.labels("directory", "destroyed").inc()
        async with self._jetstream() as js:
            for info in await js.streams_info():
                if info.config.name and info.config.name.startswith(STREAM_PREFIX) and info.config.description == mark:
                    await js.delete_stream(info.config.name)
                    removed.append(info.config.name)
                    RESOURCES.labels("stream", "destroyed").inc()
        return DestroyResult(removed=removed)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.plan, self.provision, self.destroy, self.declared]


def _refuse_outside_scope(project: str, environment: str, specs: list[ResourceSpec]) -> None:
    """Refuse a stream of ``specs`` with a subject outside the subject space of ``project`` in ``environment``."""
    scope = subject_scope(project, environment)
    for spec in specs:
        if spec.kind != "stream" or spec.from_project is not None:
            continue
        for index, subject in enumerate(spec.subjects):
            problem = subject_outside_scope(subject, scope)
            if problem:
                raise failure(INVALID_REQUEST, f"stream {spec.name}: subjects[{index}] {subject[:80]!r} {problem}")


def _refuse_overlaps_within(wanted: dict[str, tuple[str, list[str]]]) -> None:
    """Refuse two streams of one request (name: address, subjects) whose subjects overlap."""
    names = list(wanted)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            clash = _first_overlap(wanted[first][1], wanted[second][1])
            if clash is not None:
                raise failure(
                    INVALID_REQUEST,
                    f"streams {first} and {second} of this request overlap: {clash[0]!r} and {clash[1]!r}",
                )


async def _all_streams(js: JetStreamContext) -> list[StreamInfo]:
    """Every stream on the server, page after page (one listing holds a page of them)."""
    streams: list[StreamInfo] = []
    while True:
        page = cast(StreamsListIterator, await js.streams_info_iterator(offset=len(streams)))
        streams.extend(page)
        if len(streams) >= page.total or not page.streams:
            return streams


def _risks(change: PlannedChange, spec: ResourceSpec) -> Iterator[str]:
    """Why a change of the plan makes it HIGH, if it does."""
    if change.action == "noop":
        return
    if change.action == "replace":
        yield f"replace {change.kind} {change.name} ({change.detail}): its content goes"
    if spec.kind == "sqlite":
        yield f"{change.action} sqlite {change.name} (a database)"
    if spec.kind in ("stream", "kv") and spec.max_bytes > HIGH_STREAM_BYTES:
        yield f"{spec.kind} {spec.name} may hold {spec.max_bytes / 1024**3:.1f} GiB"


def _replaced(before: Record, current: Record) -> bool:
    return any(before.spec.get(k) != current.spec.get(k) for k in _REPLACED_BY.get(current.kind, ()))


def _make_directory(path: Path, mark: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / OWNER_FILE).write_text(mark + "\n")


def _sqlite_owner(path: Path) -> tuple[bool, str | None]:
    if not path.exists():
        return False, None
    if not path.is_file() or path.is_symlink():
        return True, None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT mark FROM quantum_owner LIMIT 1").fetchone()
    except sqlite3.Error:
        return True, None
    return True, (str(row[0]) if row else None)


def _make_sqlite(path: Path, mark: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS quantum_owner (mark TEXT NOT NULL)")
        db.execute("DELETE FROM quantum_owner")
        db.execute("INSERT INTO quantum_owner (mark) VALUES (?)", (mark,))
        db.commit()


def _sqlite_files(path: Path) -> list[Path]:
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


def _remove_files(path: Path, kind: str) -> None:
    if kind == "directory":
        shutil.rmtree(path)
        return
    for file in _sqlite_files(path):
        file.unlink(missing_ok=True)


def _move_aside(path: Path, target: Path, kind: str) -> None:
    """Move a directory or a database (with its side files) into the trash, replacing an older copy there."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if kind == "directory":
        os.replace(path, target / "content")
        return
    for file in _sqlite_files(path):
        if file.exists():
            os.replace(file, target / file.name)


def _move_back(source: Path, path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "directory":
        os.replace(source / "content", path)
    else:
        for file in source.iterdir():
            os.replace(file, path.parent / file.name)
    shutil.rmtree(source)
