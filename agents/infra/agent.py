"""QInfra's ``InfraAgent``: its activities ``infra.plan`` (the diff of the desired resources against the state, in
dependency order, with its impact), ``infra.declared`` (what a project last provisioned), ``infra.provision`` (the
plan applied in order and journaled) and ``infra.destroy`` (the compensation, the run's journal walked backwards, or
the owner marks of a run from before the state store), over the plumbing and effects of ``InfraEffects``. The
package's docstring (``agents/infra/__init__.py``) explains the design.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from nats.js.api import StreamInfo, StreamsListIterator
from nats.js.client import JetStreamContext
from temporalio import activity

from agents.errors import INVALID_REQUEST, failure
from agents.infra.effects import RESOURCES, InfraEffects, _Context
from agents.infra.files import _move_back
from agents.infra.names import OWNER_FILE, STREAM_PREFIX, owner_mark
from agents.infra.state import (
    PORTS_LOCK_FILE,
    RUNS_DIR,
    STATE_DIR,
    STATE_FILE,
    Journal,
    Record,
    State,
    _atomic_write,
    _removal_order,
    attributes,
    dependency_order,
)
from agents.infra.subjects import _first_overlap, _refuse_outside_scope, _refuse_overlaps_within, subject_scope
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

HIGH_STREAM_BYTES = 1024**3
_REPLACED_BY = {"stream": ("storage",), "kv": ("storage",)}


def _now_ns() -> int:
    return time.time_ns()


class InfraAgent(InfraEffects):
    """QInfra: resources under ``root`` and on the NATS at ``nats_url``, with their state under ``root/.state``."""

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
