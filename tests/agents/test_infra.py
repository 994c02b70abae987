"""QInfra against the real state store, the real file system and the real NATS: order, idempotency, diffs,
compensation, locking and ports."""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StorageType
from nats.js.client import JetStreamContext
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from agents.infra import (
    STATE_DIR,
    InfraAgent,
    Record,
    _Context,
    kv_bucket_name,
    owner_mark,
    stream_name,
    subjects_overlap,
)
from agents.models import InfraPlan, PlanInfraInput, ResourceSpec, RunRef
from tests.conftest import nats_server

env = ActivityEnvironment()


class Recording(InfraAgent):
    """The real agent, noting each real creation and removal as it happens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.effects: list[str] = []

    async def _create(self, js: JetStreamContext, ctx: _Context, rec: Record) -> None:
        await super()._create(js, ctx, rec)
        self.effects.append(f"create {rec.name}")

    async def _remove(self, js: JetStreamContext, ctx: _Context, rec: Record, *, trash: bool) -> None:
        await super()._remove(js, ctx, rec, trash=trash)
        self.effects.append(f"remove {rec.name}")


def rid() -> str:
    return f"run-{uuid.uuid4()}"


def project() -> str:
    return f"p{uuid.uuid4().hex[:8]}"


def spec(kind: str, name: str, *deps: str, **fields: Any) -> ResourceSpec:
    return ResourceSpec.model_validate({"kind": kind, "name": name, "depends_on": list(deps), **fields})


async def plan(agent: InfraAgent, run: str, proj: str, *specs: ResourceSpec, environment: str = "dev") -> InfraPlan:
    result: InfraPlan = await env.run(
        agent.plan, PlanInfraInput(run_id=run, project=proj, environment=environment, resources=list(specs))
    )
    return result


async def apply(agent: InfraAgent, run: str, proj: str, *specs: ResourceSpec) -> InfraPlan:
    made = await plan(agent, run, proj, *specs)
    await env.run(agent.provision, made)
    return made


@contextlib.asynccontextmanager
async def jetstream(nats_url: str) -> Any:
    nc = await nats.connect(nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def stream_info(nats_url: str, name: str) -> Any:
    async with jetstream(nats_url) as js:
        try:
            return await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return None


# A graph declared out of order: files <- db <- cache <- events <- api, and files <- events
GRAPH = [
    spec("port", "api", "events"),
    spec("stream", "events", "cache", "files"),
    spec("kv", "cache", "db", history=3),
    spec("sqlite", "db", "files"),
    spec("directory", "files"),
]


async def test_created_in_dependency_order_and_destroyed_in_reverse(tmp_path: Path, nats_url: str) -> None:
    agent = Recording(tmp_path / "infra", nats_url)
    proj, run = project(), rid()
    made = await plan(agent, run, proj, *GRAPH)
    assert [c.name for c in made.changes] == ["files", "db", "cache", "events", "api"]
    assert made.impact == "HIGH" and any("sqlite db" in r for r in made.reasons)  # a database
    result = await env.run(agent.provision, made)

    assert agent.effects == ["create files", "create db", "create cache", "create events"]  # the port has no effect
    # each is really there
    root = tmp_path / "infra" / proj
    assert (root / "files").is_dir() and (root / "db.sqlite3").is_file()
    bucket = kv_bucket_name(proj, "cache")
    async with jetstream(nats_url) as js:
        kv = await js.key_value(bucket)
        await kv.put("k", b"v")
        assert (await kv.get("k")).value == b"v"
    cache_stream = await stream_info(nats_url, f"KV_{bucket}")
    events_stream = await stream_info(nats_url, stream_name(proj, "events"))
    assert cache_stream.config.max_msgs_per_subject == 3
    assert cache_stream.created < events_stream.created  # the server's own clock agrees
    state = agent.load_state(proj, "dev")
    assert set(state.resources) == {"files", "db", "cache", "events", "api"}
    assert all(r.created_by == run for r in state.resources.values())
    port = state.resources["api"].port
    assert port and [r.address for r in result.resources if r.name == "api"] == [f"127.0.0.1:{port}"]

    agent.effects.clear()
    destroyed = await env.run(agent.destroy, RunRef(run_id=run))
    assert agent.effects == ["remove api", "remove events", "remove cache", "remove db", "remove files"]
    assert not (root / "files").exists() and not (root / "db.sqlite3").exists()
    assert await stream_info(nats_url, f"KV_{bucket}") is None
    assert await stream_info(nats_url, stream_name(proj, "events")) is None
    assert agent.load_state(proj, "dev").resources == {}
    assert len(destroyed.removed) == 5
    assert (await env.run(agent.destroy, RunRef(run_id=run))).removed == []  # again: nothing to undo


async def test_provisioning_twice_gives_one_resource(tmp_path: Path, nats_url: str) -> None:
    agent = Recording(tmp_path / "infra", nats_url)
    proj, run = project(), rid()
    specs = [spec("stream", "jobs"), spec("kv", "flags"), spec("port", "web")]
    made = await plan(agent, run, proj, *specs)
    first = await env.run(agent.provision, made)
    again = await env.run(agent.provision, made)  # a retried activity
    assert first == again
    assert agent.effects == ["create jobs", "create flags"]
    async with jetstream(nats_url) as js:
        names = {s.config.name for s in await js.streams_info()}
    assert sum(n.startswith(f"QINFRA_{proj.upper()}_JOBS") for n in names) == 1
    assert sum(n.startswith(f"KV_QINFRA_{proj.upper()}_FLAGS") for n in names) == 1
    state = agent.load_state(proj, "dev")
    assert len(state.resources) == 3
    # another run with the same declaration: nothing to do, nothing created
    second = await apply(agent, rid(), proj, *specs)
    assert {c.action for c in second.changes} == {"noop"} and second.impact == "LOW"
    assert agent.effects == ["create jobs", "create flags"]
    assert agent.load_state(proj, "dev").resources["web"].port == state.resources["web"].port


async def test_a_cycle_and_a_missing_dependency_are_refused_at_plan_time(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url)
    with pytest.raises(ApplicationError) as cycle:
        await plan(agent, rid(), project(), spec("directory", "a", "b"), spec("stream", "b", "c"), spec("kv", "c", "a"))
    assert cycle.value.type == "InvalidRequest" and cycle.value.non_retryable
    assert "dependency cycle" in cycle.value.message and all(n in cycle.value.message for n in "abc")
    with pytest.raises(ApplicationError) as missing:
        await plan(agent, rid(), project(), spec("directory", "a"), spec("stream", "b", "ghost"))
    assert missing.value.type == "InvalidRequest" and missing.value.non_retryable
    assert "b depends on ghost" in missing.value.message
    with pytest.raises(ApplicationError) as twice:
        await plan(agent, rid(), project(), spec("directory", "a"), spec("stream", "a"))
    assert "declared twice" in twice.value.message
    assert not (tmp_path / "infra" / STATE_DIR).exists() or not list((tmp_path / "infra").glob(f"{STATE_DIR}/*/*/runs"))


async def test_deleting_a_database_is_high_and_its_compensation_puts_the_data_back(
    tmp_path: Path, nats_url: str
) -> None:
    agent = Recording(tmp_path / "infra", nats_url)
    proj, first = project(), rid()
    await apply(agent, first, proj, spec("directory", "files"), spec("sqlite", "db", "files"))
    db = tmp_path / "infra" / proj / "db.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
        conn.execute("INSERT INTO orders VALUES (42)")
        conn.commit()

    second = rid()
    made = await plan(agent, second, proj, spec("directory", "files"))
    assert [(c.action, c.name) for c in made.changes] == [("noop", "files"), ("delete", "db")]
    assert made.impact == "HIGH" and any("delete sqlite db" in r and "database" in r for r in made.reasons)
    await env.run(agent.provision, made)
    assert not db.exists() and "db" not in agent.load_state(proj, "dev").resources

    restored = await env.run(agent.destroy, RunRef(run_id=second))
    assert restored.restored == [str(db)]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT id FROM orders").fetchall() == [(42,)]
    state = agent.load_state(proj, "dev")
    assert state.resources["db"].created_by == first
    assert {s["name"] for s in state.declared} == {"files", "db"}  # what the first run declared


async def test_update_in_place_replace_and_their_compensation(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url)
    proj, first = project(), rid()
    name = stream_name(proj, "jobs")
    await apply(agent, first, proj, spec("stream", "jobs", max_bytes=1024 * 1024))

    bigger, updater = spec("stream", "jobs", max_bytes=2 * 1024 * 1024), rid()
    made = await apply(agent, updater, proj, bigger)
    assert [(c.action, c.name) for c in made.changes] == [("update", "jobs")] and made.impact == "MEDIUM"
    assert (await stream_info(nats_url, name)).config.max_bytes == 2 * 1024 * 1024
    await env.run(agent.destroy, RunRef(run_id=updater))
    assert (await stream_info(nats_url, name)).config.max_bytes == 1024 * 1024  # back as it was
    assert agent.load_state(proj, "dev").resources["jobs"].updated_by == first

    replacer = rid()
    made = await apply(agent, replacer, proj, spec("stream", "jobs", max_bytes=1024 * 1024, storage="memory"))
    assert [(c.action, c.name) for c in made.changes] == [("replace", "jobs")] and made.impact == "HIGH"
    assert (await stream_info(nats_url, name)).config.storage == StorageType.MEMORY
    result = await env.run(agent.destroy, RunRef(run_id=replacer))
    assert (await stream_info(nats_url, name)).config.storage == StorageType.FILE
    assert any("recreated empty" in n for n in result.notes)


async def test_a_compensation_leaves_what_a_later_run_changed(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url)
    proj, first, later = project(), rid(), rid()
    await apply(agent, first, proj, spec("stream", "jobs"))
    await apply(agent, later, proj, spec("stream", "jobs", max_bytes=1024 * 1024))
    result = await env.run(agent.destroy, RunRef(run_id=first))
    assert result.removed == [] and any(later in n for n in result.notes)
    assert await stream_info(nats_url, stream_name(proj, "jobs")) is not None


async def test_a_plan_made_before_another_run_applied_is_refused(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url)
    proj = project()
    mine = await plan(agent, rid(), proj, spec("directory", "a"))
    theirs = await plan(agent, rid(), proj, spec("directory", "b"))
    await env.run(agent.provision, theirs)
    with pytest.raises(ApplicationError) as info:
        await env.run(agent.provision, mine)
    assert info.value.type == "InvalidRequest" and "changed since this plan" in info.value.message
    assert not (tmp_path / "infra" / proj / "a").exists()


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"a test holder")
print("held", flush=True)
time.sleep(600)
"""


async def test_the_state_lock_serialises_runs_and_a_dead_holder_never_blocks(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url, lock_timeout=1.0)
    proj = project()
    lock = agent.state_dir(proj, "dev") / "lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ApplicationError) as info:
            await plan(agent, rid(), proj, spec("directory", "a"))
        assert info.value.type == "ProvisionFailure" and not info.value.non_retryable
        assert "locked by a test holder" in info.value.message
    finally:
        holder.kill()  # dies holding the lock
        holder.wait()
    await apply(agent, rid(), proj, spec("directory", "a"))
    assert (tmp_path / "infra" / proj / "a").is_dir()
    # the lock is really free afterwards
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


async def test_ports_are_never_shared_and_environments_are_apart(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url)
    projects = [project() for _ in range(3)]
    for proj in projects:
        await apply(agent, rid(), proj, spec("port", "web"), spec("port", "admin"), spec("directory", "d"))
    staging = rid()
    made = await plan(agent, staging, projects[0], spec("port", "web"), spec("directory", "d"), environment="staging")
    assert {c.action for c in made.changes} == {"create"}
    await env.run(agent.provision, made)
    assert (tmp_path / "infra" / f"{projects[0]}@staging" / "d").is_dir()
    ports = [
        r.port
        for proj in projects
        for environment in ("dev", "staging")
        for r in agent.load_state(proj, environment).resources.values()
        if r.port is not None
    ]
    assert len(ports) == 7 and len(set(ports)) == 7


# --- subjects: each project's streams stay in its own subject space ----------------------------------------------


async def refusal(work: Awaitable[Any]) -> ApplicationError | None:
    """The failure ``work`` ends with, None when it succeeds."""
    try:
        await work
    except ApplicationError as err:
        return err
    return None


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[str]:
    """A ``nats-server -js`` of this test's own: a bus where no project has a stream yet."""
    with nats_server(tmp_path / "nats") as url:
        yield url


async def delete_streams(nats_url: str, *names: str) -> None:
    async with jetstream(nats_url) as js:
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)


async def test_a_squatter_on_every_projects_subjects_is_refused_and_blocks_no_one(
    tmp_path: Path, own_nats: str
) -> None:
    """``qinfra.>`` would take every project's messages, and NATS would refuse every other project's stream."""
    nats_url = own_nats
    agent = InfraAgent(tmp_path / "infra", nats_url)
    squatter, victim = project(), project()
    try:
        refused = await refusal(apply(agent, rid(), squatter, spec("stream", "all", subjects=["qinfra.>"])))
        await apply(agent, rid(), victim, spec("stream", "events"))  # before the bound: "subjects overlap"
        assert refused is not None, "the squatter's stream was provisioned"
        assert refused.type == "InvalidRequest" and refused.non_retryable
        assert "stream all: subjects[0] 'qinfra.>'" in refused.message
        assert f"'qinfra.{squatter}.'" in refused.message  # where it may go
        assert await stream_info(nats_url, stream_name(squatter, "all")) is None
        assert agent.load_state(squatter, "dev").resources == {}
        events = await stream_info(nats_url, stream_name(victim, "events"))
        assert events.config.subjects == [f"qinfra.{victim}.events.>"]
    finally:
        await delete_streams(nats_url, stream_name(squatter, "all"), stream_name(victim, "events"))


def outside(proj: str) -> list[str]:
    """Subjects a stream of ``proj`` in dev may not take: another's, wildcards over the scope, malformed ones."""
    return [
        "qinfra.>",
        "qinfra.*",
        "qinfra.*.x",
        "qinfra.*.>",
        ">",
        "*",
        "*.>",
        "*.*.x",
        "$JS.API.>",
        "quantum.>",
        f"qinfra.other{proj}.x",
        f"qinfra.{proj}x.y",  # begins with the scope's characters, not its tokens
        f"qinfra.{proj[:-1]}",
        f"QINFRA.{proj}.x",
        f"x.qinfra.{proj}.y",
        f".qinfra.{proj}.x",
        f"qinfra..{proj}.x",
        f"qinfra.{proj}..x",
        f"qinfra.{proj}.",
        f"qinfra.{proj}.>.x",
        f"qinfra.{proj}.x>",
        f"qinfra.{proj}.a*",
        f"qinfra.{proj}.a b",
        f" qinfra.{proj}.x",
        f"qinfra.{proj}.x ",
        f"qinfra.{proj}.x\n",
        f"qinfra.{proj}.x\t.y",
        f"qinfra.{proj}.\u00e9",
        f"qinfra.{proj}.x\u200b",
        "",
        f"qinfra.{proj}." + "a" * 300,
    ]


async def test_subjects_outside_the_projects_scope_are_refused_at_plan(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url)
    proj = project()
    accepted = []
    for subject in outside(proj):
        err = await refusal(plan(agent, rid(), proj, spec("stream", "s", subjects=[f"qinfra.{proj}.ok", subject])))
        if err is None or err.type != "InvalidRequest" or "stream s: subjects[1]" not in err.message:
            accepted.append((subject, err and err.message))
    assert accepted == []
    # another environment's scope is its own: qinfra.<project>.<environment>
    staging = await refusal(
        plan(agent, rid(), proj, spec("stream", "s", subjects=[f"qinfra.{proj}.x"]), environment="staging")
    )
    assert staging is not None and f"'qinfra.{proj}.staging.'" in staging.message
    assert not list((tmp_path / "infra").glob(f"{STATE_DIR}/*/*/runs/*"))  # nothing applied


async def test_a_plan_made_elsewhere_with_a_subject_outside_the_scope_is_refused_at_provision(
    tmp_path: Path, own_nats: str
) -> None:
    nats_url = own_nats
    agent = InfraAgent(tmp_path / "infra", nats_url)
    proj = project()
    made = await plan(agent, rid(), proj, spec("stream", "all"))
    forged = made.model_copy(update={"resources": [spec("stream", "all", subjects=["qinfra.>"])]})
    err = await refusal(env.run(agent.provision, forged))
    assert err is not None and err.type == "InvalidRequest" and "'qinfra.>'" in err.message
    assert await stream_info(nats_url, stream_name(proj, "all")) is None


async def test_a_projects_own_explicit_subjects_provision_and_change(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url)
    proj = project()
    name = stream_name(proj, "orders")
    try:
        await apply(
            agent, rid(), proj, spec("stream", "orders", subjects=[f"qinfra.{proj}", f"qinfra.{proj}.orders.*"])
        )
        assert sorted((await stream_info(nats_url, name)).config.subjects) == [
            f"qinfra.{proj}",
            f"qinfra.{proj}.orders.*",
        ]
        async with jetstream(nats_url) as js:
            assert (await js.publish(f"qinfra.{proj}.orders.new", b"{}")).stream == name
        # its own stream is no overlap: the subjects widen in place
        made = await apply(agent, rid(), proj, spec("stream", "orders", subjects=[f"qinfra.{proj}.>"]))
        assert [c.action for c in made.changes] == ["update"]
        assert (await stream_info(nats_url, name)).config.subjects == [f"qinfra.{proj}.>"]
    finally:
        await delete_streams(nats_url, name)


async def test_an_overlap_with_an_existing_stream_is_reported_at_plan_naming_it_and_its_owner(
    tmp_path: Path, own_nats: str
) -> None:
    nats_url = own_nats
    agent = InfraAgent(tmp_path / "infra", nats_url)
    squatter, victim, proj = project(), project(), project()
    squatted, squatter_run = stream_name(squatter, "all"), rid()
    everything = stream_name(proj, "everything")
    try:
        # a stream on every project's subjects, as one was provisioned before subjects were bounded
        async with jetstream(nats_url) as js:
            await js.add_stream(name=squatted, subjects=["qinfra.>"], description=owner_mark(squatter_run))
        err = await refusal(plan(agent, rid(), victim, spec("directory", "d"), spec("stream", "events")))
        assert err is not None, "the plan did not see the overlap"
        assert err.type == "InvalidRequest" and err.non_retryable
        assert f"'qinfra.{victim}.events.>' overlaps 'qinfra.>'" in err.message
        assert squatted in err.message and owner_mark(squatter_run) in err.message
        await delete_streams(nats_url, squatted)

        # the whole dev scope of a project overlaps its streams in other environments: named with their project
        dev_run = rid()
        await apply(agent, dev_run, proj, spec("stream", "everything", subjects=[f"qinfra.{proj}.>"]))
        err = await refusal(plan(agent, rid(), proj, spec("stream", "jobs"), environment="staging"))
        assert err is not None, "the plan did not see the overlap"
        assert f"'qinfra.{proj}.staging.jobs.>' overlaps 'qinfra.{proj}.>'" in err.message
        assert everything in err.message and f"project {proj} in dev" in err.message
        assert owner_mark(dev_run) in err.message
    finally:
        await delete_streams(nats_url, squatted, everything)


async def test_streams_of_one_request_that_overlap_are_refused_at_plan(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url)
    proj = project()
    both = (spec("stream", "a", subjects=[f"qinfra.{proj}.x.>"]), spec("stream", "b", subjects=[f"qinfra.{proj}.*.y"]))
    err = await refusal(plan(agent, rid(), proj, *both))
    assert err is not None and err.type == "InvalidRequest"
    assert "streams a and b of this request overlap" in err.message


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a.*", True),
        (">", "a", True),
        ("*.>", "a", False),
        ("*.>", "a.b", True),
        ("a.*.c", "a.b.>", True),
        ("a.*.c", "a.b.d", False),
        ("*.b", "a.*", True),
        ("qinfra.>", "qinfra.p.events.>", True),
        ("qinfra.p.>", "qinfra.q.>", False),
        ("qinfra.p", "qinfra.p.>", False),
    ],
)
def test_subject_overlap_follows_nats_wildcards(first: str, second: str, overlap: bool) -> None:
    assert subjects_overlap(first, second) is overlap
    assert subjects_overlap(second, first) is overlap
