"""The base of the QInfra agent: its connection to the bus, the state directory and its locks (``flock``), each
activity's view of a state under its lock (``_Context``), the address of a resource, whether it exists and whose it
is, and the effects on each kind of resource (create, update in place, remove, reserve a port, purge old trash), with
the ``quantum_agent_infra_resources_total`` counter they keep.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from agents.errors import INVALID_REQUEST, PROVISION_FAILURE, failure, without_secrets
from agents.infra.files import _make_directory, _make_sqlite, _move_aside, _remove_files, _sqlite_owner
from agents.infra.names import (
    KV_STREAM_PREFIX,
    OWNER_FILE,
    SQLITE_SUFFIX,
    kv_bucket_name,
    owner_mark,
    project_dir,
    stream_name,
)
from agents.infra.state import (
    LOCK_FILE,
    RUNS_DIR,
    STATE_DIR,
    STATE_FILE,
    TRASH_DIR,
    TRASH_RETENTION_SECONDS,
    Record,
    State,
    _atomic_write,
)
from agents.infra.subjects import subject_scope
from agents.models import ResourceSpec
from agents.workspace import run_dir_name

DEFAULT_LOCK_TIMEOUT = 60.0
_ENVIRONMENT = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")

RESOURCES = Counter("quantum_agent_infra_resources_total", "Resources created or destroyed", ["kind", "action"])


class _Context:
    """One activity's view of one project's state, under its lock."""

    def __init__(self, agent: InfraEffects, project: str, environment: str, run_id: str) -> None:
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


class InfraEffects:
    """What the agent's activities stand on: the bus, the locked state and the effects on each kind of resource."""

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

    def _ports_in_use(self, ctx: _Context) -> set[int]:
        """Every port a resource holds, in any project's state (this one's as it is in memory)."""
        taken = {r.port for r in ctx.state.resources.values() if r.port is not None}
        for path in (self.root / STATE_DIR).glob(f"*/*/{STATE_FILE}"):
            if (path.parent.parent.name, path.parent.name) != (ctx.project, ctx.environment):
                state = State.model_validate_json(path.read_text(encoding="utf-8"))
                taken |= {r.port for r in state.resources.values() if r.port is not None}
        return taken
