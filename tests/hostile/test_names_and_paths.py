"""Whatever name or path the workspace writer and the infrastructure agent accept stays inside its root: checked
by resolving what they return, by writing through it, and by listing what lies outside afterwards."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from agents.codegen import FileReply, FilesReply, checked_files
from agents.infra import STATE_DIR, InfraAgent, kv_bucket_name, project_dir, stream_name
from agents.models import DeclaredInput, InfraPlan, PlanInfraInput, PlannedChange, ResourceSpec
from agents.workspace import Workspaces, relative_path_problem, run_dir_name, safe_join
from events.models import source_path_problem

from .strategies import hostile_text, names, source_paths

ENVIRONMENTS = ["dev", "staging", "prod"]
BUS_NAME = re.compile(r"[A-Za-z0-9_]{1,255}")
"""A JetStream stream or bucket name the product makes: no '.', '*', '>', space or path separator."""
UNSAFE_ARTIFACT = "UnsafeArtifact"
TRAVERSALS = ["../x.py", "../../etc/evil", "/etc/passwd", "a/../../x.py", "link/x.py", "link/../x.py", "a\\..\\x.py"]

rel_paths = st.one_of(
    source_paths,
    st.sampled_from(TRAVERSALS),
    hostile_text,
    st.lists(st.one_of(st.sampled_from(["..", ".", "", "link", "inner", "a", "x.py"]), hostile_text), max_size=6).map(
        "/".join
    ),
    st.integers(190, 320).map(lambda n: "a/" * (n // 2) + "x.py"),
)


climbs = st.builds(lambda up, name: "../" * up + name, st.integers(0, 3), st.sampled_from(["escaped", "planted"]))
"""Paths that climb at most three levels: a root three levels below the temporary directory keeps even a
successful escape inside it."""
confined_text = hostile_text.filter(lambda text: text.count("..") <= 3 and "\x00" not in text and "/" not in text[:1])


@contextmanager
def sandbox_root() -> Iterator[tuple[Path, Path]]:
    """A root three levels below a temporary directory, with a link inside leading outside and one leading inside;
    and the outside."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root, outside = base / "l1" / "l2" / "l3" / "root", base / "outside"
        (root / "inner").mkdir(parents=True)
        outside.mkdir()
        (root / "link").symlink_to(outside, target_is_directory=True)
        (root / "inside").symlink_to(root / "inner", target_is_directory=True)
        yield root, outside


def top(root: Path) -> Path:
    return root.parents[3]


def everything_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


# --- the workspace writer ---------------------------------------------------------------------------------------------


@given(rel=rel_paths)
@example(rel="link/x.py")
@example(rel="../../etc/evil")
@example(rel="inside/x.py")
def test_the_workspace_writer_writes_only_inside_its_root(rel: str) -> None:
    with sandbox_root() as (root, outside):
        siblings = everything_under(top(root))
        try:
            target = safe_join(root, rel)
        except ApplicationError as err:
            assert err.type == UNSAFE_ARTIFACT and err.non_retryable and err.message
            assert everything_under(top(root)) == siblings
            return
        assert relative_path_problem(rel) is None
        assert inside(target, root), f"{rel!r} -> {target.resolve()}"
        if target.is_dir():  # a directory of the root (`inner`): nothing to write over
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x = 1\n")
        assert everything_under(outside) == []
        assert inside(target, root) and target.read_text() == "x = 1\n"


@given(path=st.one_of(source_paths, rel_paths, st.text(max_size=40)))
def test_what_a_request_may_name_the_writer_writes_inside(path: str) -> None:
    """The request's check and the writer's agree: a source path the request accepts is one the writer writes."""
    if source_path_problem(path) is not None:
        return
    assert relative_path_problem(path) is None
    with sandbox_root() as (root, outside):
        target = safe_join(root / "inner", path)
        assert inside(target, root / "inner")


@given(paths=st.lists(rel_paths, min_size=1, max_size=4))
def test_a_model_reply_naming_any_unsafe_path_is_refused_whole(paths: list[str]) -> None:
    reply = FilesReply(files=[FileReply(path=path, content="x = 1\n") for path in paths])
    try:
        files = checked_files(reply)
    except ApplicationError as err:
        assert err.type == UNSAFE_ARTIFACT and "the model named a file" in err.message
        assert any(relative_path_problem(p.strip()) is not None or not p.strip().endswith(".py") for p in paths)
        return
    assert all(relative_path_problem(rel) is None and rel.endswith(".py") for rel in files)


@given(run_ids=st.lists(st.one_of(st.text(min_size=1, max_size=300), hostile_text.filter(bool)), min_size=2))
@example(run_ids=["..", "."])
@example(run_ids=["../../x", "..%2f"])
@example(run_ids=["a/b", "a_b"])
def test_a_run_directory_is_a_child_of_the_root_whatever_the_run_id(run_ids: list[str]) -> None:
    root = Path("/nonexistent/workspaces")
    workspaces = Workspaces(root)
    dirs = {run_id: workspaces.for_run(run_id) for run_id in run_ids}
    for run_id, directory in dirs.items():
        assert directory.parent == root and directory.name not in {"", ".", ".."}
        assert os.sep not in directory.name and not directory.name.startswith(("-", "."))
        assert directory.name == run_dir_name(run_id)
    assert len(set(dirs.values())) == len(dirs), "distinct runs, distinct directories"


# --- the infrastructure agent -----------------------------------------------------------------------------------------


@given(
    project=st.one_of(names, hostile_text),
    name=st.one_of(names, hostile_text),
    environment=st.sampled_from(ENVIRONMENTS),
)
@example(project="..", name="x", environment="dev")
@example(project="a", name="../../etc", environment="prod")
def test_resource_addresses_of_accepted_names_stay_inside_the_root(project: str, name: str, environment: str) -> None:
    try:
        spec = ResourceSpec(kind="directory", name=name)
        PlanInfraInput(run_id="r", project=project, environment=environment, resources=[spec])
    except ValidationError as err:
        assert {"project", "name"} & {str(loc) for e in err.errors() for loc in e["loc"]}
        return
    root = Path("/srv/quantum/infra")
    for path in (
        project_dir(root, project, environment) / name,
        InfraAgent(root, "nats://x").state_dir(project, environment),
    ):
        assert inside(path, root) and ".." not in path.parts
    for address in (stream_name(project, name, environment), kv_bucket_name(project, name, environment)):
        assert BUS_NAME.fullmatch(address), address


async def plan_in(root: Path, nats_url: str, environment: str) -> InfraPlan | ApplicationError:
    agent = InfraAgent(root, nats_url, lock_timeout=5)
    spec = ResourceSpec(kind="directory", name="data")
    inp = PlanInfraInput(run_id="pipeline-1", project="app", environment=environment, resources=[spec])
    try:
        plan: InfraPlan = await ActivityEnvironment().run(agent.plan, inp)
    except ApplicationError as err:
        return err
    return plan


@given(
    environment=st.one_of(confined_text, climbs, st.sampled_from(["..", "dev/../..", "Dev", "", "dev", "a/b"])).filter(
        lambda text: not text.endswith("\n")  # test_an_environment_with_a_trailing_newline_is_refused
    )
)
async def test_planning_refuses_an_environment_that_is_not_a_plain_name(nats_url: str, environment: str) -> None:
    with sandbox_root() as (root, outside):
        siblings = everything_under(top(root))
        plan = await plan_in(root, nats_url, environment)
        if isinstance(plan, ApplicationError):
            assert plan.type == "InvalidRequest" and "environment" in plan.message
            assert everything_under(top(root)) == siblings
            return
        assert re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", environment), repr(environment)
        assert all(inside(Path(c.address), root) for c in plan.changes if c.kind == "directory")
        assert everything_under(outside) == []


@given(environment=st.sampled_from(ENVIRONMENTS).map(lambda name: name + "\n"))
@example(environment="prod\n")
async def test_an_environment_with_a_trailing_newline_is_refused(nats_url: str, environment: str) -> None:
    with sandbox_root() as (root, _):
        plan = await plan_in(root, nats_url, environment)
        assert isinstance(plan, ApplicationError), f"planned {environment!r}: impact {plan.impact}"


@given(environment=st.one_of(names, climbs))
@example(environment="../../../planted")
async def test_reading_a_projects_declared_resources_stays_inside_the_root(environment: str) -> None:
    with sandbox_root() as (root, outside):
        planted = root.parent / "planted"  # three levels above <root>/.state/app
        planted.mkdir()
        state = {"project": "app", "environment": "x", "declared": [{"kind": "directory", "name": "stolen"}]}
        (planted / "state.json").write_text(json.dumps(state))
        (root / STATE_DIR / "app").mkdir(parents=True)  # the project has a state: it provisioned before
        agent = InfraAgent(root, "nats://127.0.0.1:9")
        try:
            found = await ActivityEnvironment().run(
                agent.declared, DeclaredInput(project="app", environment=environment)
            )
        except ApplicationError as err:
            assert err.type == "InvalidRequest"
            return
        assert [r.name for r in found.resources] != ["stolen"], "read a state file outside the root"


@given(project=st.one_of(names, climbs, confined_text))
@example(project="../../../escaped")
async def test_provisioning_writes_only_inside_the_root(nats_url: str, project: str) -> None:
    with sandbox_root() as (root, outside):
        siblings = everything_under(top(root))
        agent = InfraAgent(root, nats_url, lock_timeout=5)
        spec = ResourceSpec(kind="directory", name="data")
        change = PlannedChange(action="create", kind="directory", name="data", address="")
        plan = InfraPlan(
            run_id="pipeline-1", project=project, environment="dev", changes=[change], resources=[spec], impact="LOW"
        )
        try:
            await ActivityEnvironment().run(agent.provision, plan)
        except ApplicationError:
            pass
        added = set(everything_under(top(root))) - set(siblings)
        assert all(path.startswith("l1/l2/l3/root/") for path in added), sorted(added)
        assert everything_under(outside) == []
