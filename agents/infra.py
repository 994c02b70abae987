"""QInfra: plans, provisions and destroys real resources: directories in the data dir and JetStream streams.

Each resource carries its owner, the run id (a ``.quantum-owner`` file in a directory, the description of a
stream), so that ``destroy`` removes exactly what its run created and nothing else, however often it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter
from temporalio import activity

from agents.errors import INVALID_REQUEST, PROVISION_FAILURE, failure
from agents.models import (
    DestroyResult,
    InfraPlan,
    PlanInfraInput,
    PlannedChange,
    ProvisionedResource,
    ProvisionResult,
    ResourceSpec,
    RunRef,
)

OWNER_FILE = ".quantum-owner"
STREAM_PREFIX = "QINFRA_"
HIGH_STREAM_BYTES = 1024**3

RESOURCES = Counter("quantum_agent_infra_resources_total", "Resources created or destroyed", ["kind", "action"])


def stream_name(project: str, name: str) -> str:
    """The JetStream stream of ``project``'s resource ``name``: readable, and distinct for distinct pairs.

    ``a`` + ``b_c`` and ``a_b`` + ``c`` read alike (``A_B_C``), so the name ends with a digest of the pair.
    """
    readable = re.sub(r"[^A-Z0-9_]", "_", f"{project}_{name}".upper())[:80]
    digest = hashlib.sha256(f"{project}/{name}".encode()).hexdigest()[:10]
    return f"{STREAM_PREFIX}{readable}_{digest}"


def owner_mark(run_id: str) -> str:
    return f"quantum run {run_id}"


class InfraAgent:
    """QInfra: directories under ``root`` and JetStream streams on the NATS at ``nats_url``."""

    def __init__(self, root: Path, nats_url: str) -> None:
        self.root = root
        self.nats_url = nats_url

    @asynccontextmanager
    async def _jetstream(self) -> AsyncIterator[JetStreamContext]:
        try:
            nc = await nats.connect(
                servers=[s.strip() for s in self.nats_url.split(",")],
                connect_timeout=5,
                max_reconnect_attempts=1,
                allow_reconnect=False,
            )
        except Exception as err:  # nats raises several unrelated types for an unreachable server
            raise failure(PROVISION_FAILURE, f"NATS at {self.nats_url} does not answer: {err}") from None
        try:
            yield nc.jetstream()
        finally:
            await nc.close()

    def _directory(self, project: str, name: str) -> Path:
        return self.root / project / name

    @activity.defn(name="infra.plan")
    async def plan(self, inp: PlanInfraInput) -> InfraPlan:
        """What provisioning would do, and how much it could hurt (impact LOW, MEDIUM or HIGH)."""
        changes: list[PlannedChange] = []
        reasons: list[str] = []
        mark = owner_mark(inp.run_id)
        async with self._jetstream() as js:
            for res in inp.resources:
                if res.kind == "directory":
                    path = self._directory(inp.project, res.name)
                    owner = (path / OWNER_FILE).read_text().strip() if (path / OWNER_FILE).is_file() else None
                    exists, address = path.exists(), str(path)
                else:
                    address = stream_name(inp.project, res.name)
                    try:
                        info = await js.stream_info(address)
                        exists, owner = True, info.config.description
                    except NotFoundError:
                        exists, owner = False, None
                    if res.max_bytes > HIGH_STREAM_BYTES:
                        reasons.append(f"stream {res.name} may hold {res.max_bytes / 1024**3:.1f} GiB")
                if not exists:
                    changes.append(PlannedChange(action="create", kind=res.kind, name=res.name, address=address))
                elif owner == mark:
                    changes.append(PlannedChange(action="noop", kind=res.kind, name=res.name, address=address))
                else:
                    detail = f"already exists ({owner or 'no owner'})"
                    changes.append(
                        PlannedChange(action="update", kind=res.kind, name=res.name, address=address, detail=detail)
                    )
                    reasons.append(f"{res.kind} {res.name} {detail}")
        if inp.environment == "prod":
            reasons.insert(0, "environment is prod")
        impact = (
            "HIGH"
            if reasons
            else "MEDIUM"
            if any(c.kind == "stream" and c.action == "create" for c in changes)
            else "LOW"
        )
        return InfraPlan(
            run_id=inp.run_id,
            project=inp.project,
            environment=inp.environment,
            changes=changes,
            resources=inp.resources,
            impact=impact,
            reasons=reasons,
        )

    @activity.defn(name="infra.provision")
    async def provision(self, plan: InfraPlan) -> ProvisionResult:
        """Create every resource of the plan; one this run already created is kept as it is."""
        mark = owner_mark(plan.run_id)
        created: list[ProvisionedResource] = []
        async with self._jetstream() as js:
            for change in plan.changes:
                if change.action == "update":
                    raise failure(
                        INVALID_REQUEST,
                        f"{change.kind} {change.address} {change.detail}: it is not this run's to change",
                    )
                if change.kind == "directory":
                    await asyncio.to_thread(self._make_directory, Path(change.address), mark)
                else:
                    await self._make_stream(js, change, plan, mark)
                created.append(ProvisionedResource(kind=change.kind, name=change.name, address=change.address))
                RESOURCES.labels(change.kind, "created").inc()
        return ProvisionResult(resources=created)

    @staticmethod
    def _make_directory(path: Path, mark: str) -> None:
        owner = path / OWNER_FILE
        if path.exists() and not (owner.is_file() and owner.read_text().strip() == mark):
            raise failure(INVALID_REQUEST, f"directory {path} exists and belongs to someone else")
        path.mkdir(parents=True, exist_ok=True)
        owner.write_text(mark + "\n")

    async def _make_stream(self, js: JetStreamContext, change: PlannedChange, plan: InfraPlan, mark: str) -> None:
        spec = self._spec_for(plan, change.name)
        try:
            info = await js.stream_info(change.address)
        except NotFoundError:
            info = None
        if info is not None:
            if info.config.description != mark:
                raise failure(INVALID_REQUEST, f"stream {change.address} exists and belongs to someone else")
            return
        config = StreamConfig(
            name=change.address,
            subjects=spec.subjects or [f"qinfra.{plan.project}.{spec.name}.>"],
            storage=StorageType.FILE,
            max_bytes=spec.max_bytes,
            max_age=float(spec.max_age_seconds),
            description=mark,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as err:
            raise failure(INVALID_REQUEST, f"stream {change.address} refused by NATS: {err.description}") from None
        except Exception as err:
            raise failure(PROVISION_FAILURE, f"stream {change.address} could not be created: {err}") from None

    @staticmethod
    def _spec_for(plan: InfraPlan, name: str) -> ResourceSpec:
        for spec in plan.resources:
            if spec.kind == "stream" and spec.name == name:
                return spec
        raise failure(INVALID_REQUEST, f"no stream {name} in the plan")

    @activity.defn(name="infra.destroy")
    async def destroy(self, ref: RunRef) -> DestroyResult:
        """Remove every directory and stream this run owns (compensation); nothing to remove is fine."""
        mark = owner_mark(ref.run_id)
        removed: list[str] = []
        for owner in sorted(self.root.glob(f"*/*/{OWNER_FILE}")) if self.root.is_dir() else []:
            if owner.read_text().strip() == mark:
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
        return [self.plan, self.provision, self.destroy]
