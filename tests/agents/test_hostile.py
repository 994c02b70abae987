"""Code under test is hostile, also after its sandbox exits; requests and run ids are chosen by others.

Each test plays the attacker against the real agents (bubblewrap, pytest, bandit, release processes) and checks
that the worker never acts outside its run, that what the code left behind never makes a run green, and that one
run never touches another's files, deployment or monitoring.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from agents.codegen import CodegenAgent, PatternLibrary
from agents.deploy import DeployAgent, pid_alive
from agents.models import (
    DeployInput,
    ExecuteTestsInput,
    GenerateCodeInput,
    GenerateTestsInput,
    MonitoringInput,
    RunRef,
    ScanInput,
)
from agents.processes import ProcessIdentity, child_env, run_bounded
from agents.sandbox import Sandbox
from agents.security import SecurityAgent
from agents.sre import SREAgent
from agents.testgen import TestgenAgent
from agents.workspace import OWNER_FILE, Workspaces, read_untrusted, run_dir_name
from events.publisher import event_id

env = ActivityEnvironment()
library = PatternLibrary()
SLUGIFY = "slugify article titles into URL slugs"


@pytest.fixture
def workspaces(tmp_path: Path) -> Workspaces:
    return Workspaces(tmp_path / "workspaces")


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


async def prepared_run(workspaces: Workspaces, run_id: str, *, hostile: str = "") -> tuple[TestgenAgent, str]:
    """Generate slugify code (with ``hostile`` appended to its module) and its tests; the module's name."""
    agent = CodegenAgent(workspaces, library)
    code = await env.run(agent.generate_code, GenerateCodeInput(run_id=run_id, project="blog", prompt=SLUGIFY))
    module = workspaces.src(run_id) / f"{code.module}.py"
    if hostile:
        module.write_text(module.read_text() + "\n" + textwrap.dedent(hostile))
    tester = TestgenAgent(workspaces, library, Sandbox())
    await env.run(
        tester.generate_tests, GenerateTestsInput(run_id=run_id, module=code.module, prompt=SLUGIFY, pattern="slugify")
    )
    return tester, code.module


# --- what sandboxed code leaves in its workspace ----------------------------------------------------------------


async def test_a_planted_link_never_makes_the_worker_write_outside(workspaces: Workspaces, tmp_path: Path) -> None:
    """The code links ``mutants`` (and every other name the worker uses) to a host directory when imported."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "keep.txt").write_text("mine")
    before = tree_digest(host)
    hostile = f"""
    import os as _os
    for _name in ("mutants", "reports/junit.xml", "src/extra", "tests/extra", "pytest.ini.new"):
        try:
            _os.symlink({str(host)!r}, "/workspace/" + _name)
        except OSError:
            pass
    """
    tester, module = await prepared_run(workspaces, "pipeline-links", hostile=hostile)
    report = await env.run(tester.execute_tests, ExecuteTestsInput(run_id="pipeline-links", module=module, mutants=4))
    assert tree_digest(host) == before  # nothing written, nothing removed
    # the JUnit report was replaced by a link: the result is not trusted, and so not green
    assert any("symbolic link" in p for p in report.problems), report
    assert report.mutation_score is None


async def test_the_mutation_score_is_measured_despite_planted_links(workspaces: Workspaces, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    hostile = f"""
    import os as _os
    try:
        _os.symlink({str(host)!r}, "/workspace/mutants")
    except OSError:
        pass
    """
    tester, module = await prepared_run(workspaces, "pipeline-mutants", hostile=hostile)
    report = await env.run(tester.execute_tests, ExecuteTestsInput(run_id="pipeline-mutants", module=module, mutants=4))
    assert list(host.iterdir()) == []
    assert report.problems == [] and report.failed == 0, report
    assert report.mutants_total == 4 and report.mutation_score is not None


async def test_rewritten_reports_never_make_failing_tests_green(workspaces: Workspaces) -> None:
    """The code breaks slugify, then rewrites the reports at exit to say every test passed with full coverage."""
    hostile = """
    import atexit as _atexit

    def slugify(title, *args, **kwargs):  # breaks every test
        return "wrong"

    def _forge():
        junit = '<testsuites><testsuite name="pytest" tests="9" failures="0" errors="0" skipped="0"/></testsuites>'
        open("/workspace/reports/junit.xml", "w").write(junit)
        cover = '{"totals": {"percent_covered": 100.0}, "files": {"x.py": {}}}'
        open("/workspace/reports/coverage.json", "w").write(cover)

    _atexit.register(_forge)
    """
    tester, module = await prepared_run(workspaces, "pipeline-forged", hostile=hostile)
    report = await env.run(tester.execute_tests, ExecuteTestsInput(run_id="pipeline-forged", module=module))
    assert report.problems and "every test passed" in report.problems[0], report
    assert report.mutation_score is None


async def test_a_fifo_or_a_huge_report_is_refused_without_hanging(workspaces: Workspaces) -> None:
    hostile = """
    import atexit as _atexit, os as _os

    def _plant():
        _os.remove("/workspace/reports/junit.xml")
        _os.mkfifo("/workspace/reports/junit.xml")
        with open("/workspace/reports/coverage.json", "w") as out:
            out.write('{"pad": "' + "x" * (9 * 1024 * 1024) + '"}')

    _atexit.register(_plant)
    """
    tester, module = await prepared_run(workspaces, "pipeline-fifo", hostile=hostile)
    report = await env.run(
        tester.execute_tests, ExecuteTestsInput(run_id="pipeline-fifo", module=module, timeout_seconds=120)
    )
    reasons = " ".join(report.problems)
    assert "not a regular file" in reasons and "larger than" in reasons, report


async def test_the_code_cannot_rewrite_what_was_fingerprinted(workspaces: Workspaces) -> None:
    """The code rewrites its own source and tests from inside the sandbox: the run's files stay as generated."""
    hostile = """
    import glob as _glob
    for _path in _glob.glob("/workspace/src/*.py") + _glob.glob("/workspace/tests/*.py"):
        open(_path, "a").write("\\n# rewritten from inside the sandbox\\n")
    """
    tester, module = await prepared_run(workspaces, "pipeline-rewrite", hostile=hostile)
    root = workspaces.for_run("pipeline-rewrite")
    before = tree_digest(root / "src") | tree_digest(root / "tests")
    await env.run(tester.execute_tests, ExecuteTestsInput(run_id="pipeline-rewrite", module=module, mutants=2))
    assert tree_digest(root / "src") | tree_digest(root / "tests") == before
    assert not list((root / "scratch").iterdir())  # every scratch copy is gone


async def test_a_policy_input_that_is_missing_is_a_problem(workspaces: Workspaces) -> None:
    tester, module = await prepared_run(workspaces, "pipeline-nothing")
    constant = "VALUE = 'x'\n"
    (workspaces.src("pipeline-nothing") / f"{module}.py").write_text(constant)
    (workspaces.tests("pipeline-nothing") / f"test_{module}.py").write_text(
        f"from {module} import VALUE\n\n\ndef test_value():\n    assert VALUE == 'x'\n"
    )
    report = await env.run(
        tester.execute_tests,
        ExecuteTestsInput(run_id="pipeline-nothing", module=module, mutants=4, min_mutation_score=0.5),
    )
    assert report.passed == 1 and report.mutation_score is None
    assert any("nothing to mutate" in p for p in report.problems)


def test_reading_untrusted_files_follows_no_link_at_any_level(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "junit.xml").write_text("secret")
    base = tmp_path / "scratch"
    base.mkdir()
    (base / "reports").symlink_to(outside)  # a link in the middle of the path
    with pytest.raises(Exception, match="symbolic link"):
        read_untrusted(base, "reports/junit.xml", max_bytes=100)
    (base / "reports").unlink()
    (base / "reports").mkdir()
    (base / "reports" / "junit.xml").symlink_to(outside / "junit.xml")
    with pytest.raises(Exception, match="symbolic link"):
        read_untrusted(base, "reports/junit.xml", max_bytes=100)


# --- scanners ----------------------------------------------------------------------------------------------------


async def test_a_nosec_comment_does_not_switch_the_scanner_off(workspaces: Workspaces) -> None:
    agent = CodegenAgent(workspaces, library)
    source = {"runner.py": "import subprocess\n\n\ndef run(cmd):\n    subprocess.call(cmd, shell=True)  # nosec\n"}
    await env.run(
        agent.generate_code, GenerateCodeInput(run_id="pipeline-nosec", project="blog", prompt=SLUGIFY, source=source)
    )
    report = await env.run(SecurityAgent(workspaces).scan, ScanInput(run_id="pipeline-nosec"))
    assert report.criticals >= 1
    assert any(f.file == "runner.py" and f.rule_id.startswith("B602") for f in report.findings)


async def test_a_file_the_scanner_cannot_read_fails_the_scan(workspaces: Workspaces) -> None:
    agent = CodegenAgent(workspaces, library)
    await env.run(agent.generate_code, GenerateCodeInput(run_id="pipeline-unparsable", project="blog", prompt=SLUGIFY))
    (workspaces.src("pipeline-unparsable") / "broken.py").write_text("def f(:\n    import os; os.system(x)\n")
    with pytest.raises(ApplicationError) as info:
        await env.run(SecurityAgent(workspaces).scan, ScanInput(run_id="pipeline-unparsable"))
    assert info.value.type == "PolicyViolation" and "broken.py" in info.value.message


@pytest.mark.parametrize("path", [".tox/hidden.py", "__pycache__/hidden.py", "a\x00b.py", "x" * 300 + ".py", "a//b.py"])
async def test_paths_a_scanner_or_the_file_system_would_read_differently_are_refused(
    workspaces: Workspaces, path: str
) -> None:
    agent = CodegenAgent(workspaces, library)
    with pytest.raises(ApplicationError) as info:
        await env.run(
            agent.generate_code,
            GenerateCodeInput(run_id="pipeline-paths", project="blog", prompt=SLUGIFY, source={path: "x = 1\n"}),
        )
    assert info.value.type == "UnsafeArtifact"


# --- names derived from ids -----------------------------------------------------------------------------------------


def test_names_derived_from_alike_ids_stay_distinct(tmp_path: Path) -> None:
    ids = ["coll:2", "coll_2", "coll.2", "coll 2", "Coll_2", "coll/2", "c" * 300, "c" * 299 + "d"]
    names = {run_dir_name(i) for i in ids}
    assert len(names) == len(ids)
    assert all(len(n) < 100 and "/" not in n and not n.startswith(".") for n in names)
    sre = SREAgent(tmp_path)
    assert len({sre._paths(i)[0] for i in ids}) == len(ids)
    steps = [("coll:2", "started"), ("coll_2", "started"), ("p.stage", "x"), ("p", "stage.x"), ("a", "b")]
    assert len({event_id(w, s) for w, s in steps}) == len(steps)


async def test_one_run_never_destroys_another_runs_files_or_deployment(workspaces: Workspaces, tmp_path: Path) -> None:
    """``coll:2`` and ``coll_2`` once shared a workspace, a deployment and a monitoring file."""
    agent = CodegenAgent(workspaces, library)
    deployer = DeployAgent(workspaces, tmp_path / "deployments")
    sre = SREAgent(tmp_path / "monitoring")
    deployments = {}
    try:
        for rid in ("coll:2", "coll_2"):
            await env.run(agent.generate_code, GenerateCodeInput(run_id=rid, project="blog", prompt=SLUGIFY))
            environment = f"dev{len(deployments)}"  # in one environment, the second deploy supersedes the first
            deployments[rid] = await env.run(
                deployer.deploy, DeployInput(run_id=rid, project="blog", environment=environment, release=rid)
            )
            await env.run(
                sre.setup_monitoring,
                MonitoringInput(run_id=rid, project="blog", environment="dev", deployment_url=deployments[rid].url),
            )
        # compensate coll:2 entirely
        await env.run(sre.teardown_monitoring, RunRef(run_id="coll:2"))
        assert (await env.run(deployer.rollback, RunRef(run_id="coll:2"))).stopped
        await env.run(agent.cleanup_code, RunRef(run_id="coll:2"))
        # coll_2 is untouched
        assert pid_alive(deployments["coll_2"].pid) and not pid_alive(deployments["coll:2"].pid)
        assert (await env.run(deployer.verify, deployments["coll_2"])).healthy
        assert any(workspaces.src("coll_2").iterdir())
        assert sre._paths("coll_2")[0].is_file()
    finally:
        deployer.stop_all()


async def test_a_compensation_refuses_what_is_not_its_runs(workspaces: Workspaces) -> None:
    agent = CodegenAgent(workspaces, library)
    await env.run(agent.generate_code, GenerateCodeInput(run_id="pipeline-a", project="blog", prompt=SLUGIFY))
    (workspaces.for_run("pipeline-a") / ".quantum-run").write_text("pipeline-b")
    with pytest.raises(ApplicationError) as info:
        await env.run(agent.cleanup_code, RunRef(run_id="pipeline-a"))
    assert info.value.type == "UnsafeArtifact"
    assert any(workspaces.src("pipeline-a").iterdir())


# --- processes ---------------------------------------------------------------------------------------------------


async def test_a_rollback_never_signals_a_reused_pid(workspaces: Workspaces, tmp_path: Path) -> None:
    agent = CodegenAgent(workspaces, library)
    deployer = DeployAgent(workspaces, tmp_path / "deployments")
    await env.run(agent.generate_code, GenerateCodeInput(run_id="pipeline-pid", project="blog", prompt=SLUGIFY))
    deployment = await env.run(
        deployer.deploy, DeployInput(run_id="pipeline-pid", project="blog", environment="dev", release="r")
    )
    deployer.stop_all()  # the release is gone; its record stays
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record_path = tmp_path / "deployments" / run_dir_name("pipeline-pid") / "deployment.json"
        record = json.loads(record_path.read_text())
        record["process"]["pid"] = bystander.pid  # the kernel gave the pid to another process
        record_path.write_text(json.dumps(record))
        rolled = await env.run(deployer.rollback, RunRef(run_id="pipeline-pid"))
        assert not rolled.stopped
        assert bystander.poll() is None and not pid_alive(deployment.pid)
    finally:
        bystander.kill()
        bystander.wait()


async def test_a_cancelled_deploy_leaves_no_release_running(workspaces: Workspaces, tmp_path: Path) -> None:
    agent = CodegenAgent(workspaces, library)
    deployer = DeployAgent(workspaces, tmp_path / "deployments")
    await env.run(agent.generate_code, GenerateCodeInput(run_id="pipeline-cancel", project="blog", prompt=SLUGIFY))
    cancelling = ActivityEnvironment()
    task = asyncio.create_task(
        cancelling.run(
            deployer.deploy, DeployInput(run_id="pipeline-cancel", project="blog", environment="dev", release="r")
        )
    )
    while "pipeline-cancel" not in deployer._children:
        await asyncio.sleep(0.01)
    pid = deployer._children["pipeline-cancel"].pid
    cancelling.cancel()
    with pytest.raises(BaseException):  # noqa: B017 - cancelled, however the environment reports it
        await task
    assert not pid_alive(pid)
    assert not (tmp_path / "deployments" / run_dir_name("pipeline-cancel")).exists()


async def test_children_get_no_secrets(workspaces: Workspaces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "sk-canary-4f1d9b"
    monkeypatch.setenv("QUANTUM_LLM_API_KEY", canary)
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    assert canary not in json.dumps(child_env())
    shown = await run_bounded([sys.executable, "-c", "import os; print(dict(os.environ))"], timeout=30)
    assert canary not in shown.stdout.decode()
    agent = CodegenAgent(workspaces, library)
    deployer = DeployAgent(workspaces, tmp_path / "deployments")
    await env.run(agent.generate_code, GenerateCodeInput(run_id="pipeline-env", project="blog", prompt=SLUGIFY))
    try:
        deployment = await env.run(
            deployer.deploy, DeployInput(run_id="pipeline-env", project="blog", environment="dev", release="r")
        )
        assert canary.encode() not in Path(f"/proc/{deployment.pid}/environ").read_bytes()
    finally:
        deployer.stop_all()


OWNER = """
import asyncio, sys
from pathlib import Path
from temporalio.testing import ActivityEnvironment
from agents.deploy import DeployAgent
from agents.models import DeployInput
from agents.workspace import Workspaces

async def main():
    root = Path(sys.argv[1])
    deployer = DeployAgent(Workspaces(root / "workspaces"), root / "deployments")
    deployment = await ActivityEnvironment().run(
        deployer.deploy, DeployInput(run_id="pipeline-owner", project="blog", environment="dev", release="r")
    )
    print(deployment.model_dump_json(), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_release_dies_with_its_owner_and_the_next_one_starts_it_again(
    workspaces: Workspaces, tmp_path: Path
) -> None:
    from agents.models import Deployment

    agent = CodegenAgent(workspaces, library)
    await env.run(agent.generate_code, GenerateCodeInput(run_id="pipeline-owner", project="blog", prompt=SLUGIFY))
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        line = await asyncio.to_thread(owner.stdout.readline)  # type: ignore[union-attr]
        deployment = Deployment.model_validate_json(line)
        release = ProcessIdentity.of(deployment.pid)
        assert release is not None and release.alive()
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        for _ in range(200):
            if not release.alive():
                break
            await asyncio.sleep(0.05)
        assert not release.alive()  # it died with the process that started it
    finally:
        if owner.poll() is None:
            owner.kill()
    successor = DeployAgent(workspaces, tmp_path / "deployments")
    try:
        assert successor.restore() == [("pipeline-owner", "started again")]
        for _ in range(200):
            if (await env.run(successor.verify, deployment)).healthy:
                break
            await asyncio.sleep(0.05)
        assert (await env.run(successor.verify, deployment)).release_matches  # same URL, same release
    finally:
        successor.stop_all()


def test_a_claim_cut_short_by_a_killed_worker_does_not_refuse_the_runs_retry(tmp_path: Path) -> None:
    """A worker killed while it wrote a workspace's owner file left it empty, and the run's retry on another worker
    was refused as another run's (seen in the scale-out test). The owner file is now written whole and renamed; an
    empty one is claimed by the run it is named for, another run's is still refused, and a link is replaced, never
    followed."""
    workspaces = Workspaces(tmp_path / "ws")
    run_id = "codegen-cut-short"
    path = workspaces.for_run(run_id)
    path.mkdir(parents=True)
    (path / OWNER_FILE).write_text("")  # what a claim cut short left
    assert workspaces.claim(run_id) == path and workspaces.owned_by(run_id)
    with pytest.raises(ApplicationError, match="belongs to another run"):
        (path / OWNER_FILE).write_text("codegen-someone-else")
        workspaces.claim(run_id)
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    (path / OWNER_FILE).unlink()
    (path / OWNER_FILE).symlink_to(outside)
    assert workspaces.claim(run_id) == path and workspaces.owned_by(run_id)
    assert outside.read_text() == "untouched" and not (path / OWNER_FILE).is_symlink()
