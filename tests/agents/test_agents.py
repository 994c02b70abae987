"""Agent activities called directly, against real parts: files, bubblewrap, pytest, bandit, nats-server, processes."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

import nats
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from agents.codegen import CodegenAgent, PatternLibrary, module_name
from agents.deploy import DeployAgent, pid_alive
from agents.infra import InfraAgent, stream_name
from agents.models import (
    DeployInput,
    ExecuteTestsInput,
    GenerateCodeInput,
    GenerateTestsInput,
    MonitoringInput,
    PlanInfraInput,
    ResourceSpec,
    RunRef,
    ScanInput,
)
from agents.sandbox import Sandbox
from agents.security import SecurityAgent
from agents.sre import SREAgent
from agents.testgen import TestgenAgent
from agents.workspace import Workspaces

PROMPTS = {
    "http_service": "an HTTP JSON service with a health endpoint",
    "slugify": "slugify article titles into URL slugs",
    "rate_limiter": "a token bucket rate limiter for API requests",
    "lru_cache": "an LRU cache with ttl for sessions",
    "semver": "parse and compare semantic version strings",
}

env = ActivityEnvironment()
library = PatternLibrary()


@pytest.fixture
def workspaces(tmp_path: Path) -> Workspaces:
    return Workspaces(tmp_path / "workspaces")


def run_id() -> str:
    return f"pipeline-{uuid.uuid4()}"


async def generate(workspaces: Workspaces, prompt: str, *, project: str = "demo-app", **extra: object):
    agent = CodegenAgent(workspaces, library)
    rid = run_id()
    code = await env.run(agent.generate_code, GenerateCodeInput(run_id=rid, project=project, prompt=prompt, **extra))
    return agent, rid, code


# --- QAgent -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", sorted(PROMPTS))
def test_each_prompt_picks_its_pattern(pattern: str) -> None:
    chosen, verdict = library.best_match(PROMPTS[pattern])
    assert chosen.name == pattern
    assert 0 < verdict.score <= 1 and verdict.runner_up not in (None, pattern)


def test_a_prompt_no_pattern_fits_is_refused_naming_the_patterns_and_the_way_forward() -> None:
    with pytest.raises(ApplicationError) as info:
        library.best_match("quantum chromodynamics lattice")
    assert info.value.type == "NoPatternMatch"
    assert info.value.non_retryable
    assert "slugify (URL slugs from titles)" in info.value.message
    assert "QUANTUM_LLM_BASE_URL" in info.value.message and "Ollama" in info.value.message


def test_module_names_never_shadow_the_standard_library() -> None:
    assert module_name("billing-api") == "billing_api"
    assert module_name("json") == "json_app"


async def test_generate_validate_fingerprint_and_cleanup(workspaces: Workspaces) -> None:
    agent, rid, code = await generate(workspaces, PROMPTS["slugify"], project="blog-posts")
    assert code.provider == "offline-patterns" and code.model is None
    assert code.pattern == "slugify" and code.module == "blog_posts"
    assert any("no language model" in note for note in code.notes)
    module = workspaces.src(rid) / "blog_posts.py"
    assert module.is_file()
    assert "{{" not in module.read_text()
    assert "slugify article titles" in module.read_text()

    validation = await env.run(agent.validate_code, RunRef(run_id=rid))
    assert validation.ok and validation.files_checked == 1

    first = await env.run(agent.fingerprint_code, RunRef(run_id=rid))
    again = await env.run(agent.fingerprint_code, RunRef(run_id=rid))
    assert first == again and len(first.digest) == 64
    module.write_text(module.read_text() + "\n# changed\n")
    changed = await env.run(agent.fingerprint_code, RunRef(run_id=rid))
    assert changed.digest != first.digest

    removed = await env.run(agent.cleanup_code, RunRef(run_id=rid))
    assert removed.removed and not workspaces.src(rid).exists()
    assert (await env.run(agent.cleanup_code, RunRef(run_id=rid))).removed == []


async def test_source_files_are_written_and_checked(workspaces: Workspaces) -> None:
    agent, rid, code = await generate(workspaces, PROMPTS["semver"], source={"pkg/helpers.py": "def broken(:\n"})
    assert {f.path for f in code.files} == {"demo_app.py", "pkg/helpers.py"}
    validation = await env.run(agent.validate_code, RunRef(run_id=rid))
    assert not validation.ok
    assert any("pkg/helpers.py:1" in e for e in validation.errors)


@pytest.mark.parametrize("path", ["../escape.py", "/etc/passwd.py", "a/../../b.py"])
async def test_unsafe_source_paths_are_refused(workspaces: Workspaces, path: str) -> None:
    with pytest.raises(ApplicationError) as info:
        await generate(workspaces, PROMPTS["semver"], source={path: "x = 1\n"})
    assert info.value.type == "UnsafeArtifact"
    assert not (workspaces.root.parent / "escape.py").exists()


async def test_a_symlink_out_of_the_workspace_fails_validation(workspaces: Workspaces, tmp_path: Path) -> None:
    agent, rid, _ = await generate(workspaces, PROMPTS["semver"])
    (tmp_path / "outside.py").write_text("x = 1\n")
    (workspaces.src(rid) / "link.py").symlink_to(tmp_path / "outside.py")
    validation = await env.run(agent.validate_code, RunRef(run_id=rid))
    assert not validation.ok
    assert any("outside the workspace" in e for e in validation.errors)


# --- QTest ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", sorted(PROMPTS))
async def test_each_pattern_passes_its_tests_in_the_sandbox(workspaces: Workspaces, pattern: str) -> None:
    _, rid, code = await generate(workspaces, PROMPTS[pattern])
    tester = TestgenAgent(workspaces, library, Sandbox())
    tests = await env.run(
        tester.generate_tests,
        GenerateTestsInput(run_id=rid, module=code.module, prompt=PROMPTS[pattern], pattern=code.pattern),
    )
    assert tests.test_count >= 4
    report = await env.run(tester.execute_tests, ExecuteTestsInput(run_id=rid, module=code.module))
    assert report.failed == 0 and report.errors == 0, report.output_tail
    assert report.passed == tests.test_count
    assert report.coverage >= 85, report.output_tail
    assert report.isolation.startswith("bwrap")
    assert report.mutants_total >= 3 and report.mutation_score is not None
    assert report.mutation_score >= 0.75, report.surviving_mutants
    assert Path(report.junit_report).is_file()


async def test_a_broken_module_fails_its_tests(workspaces: Workspaces) -> None:
    _, rid, code = await generate(workspaces, PROMPTS["slugify"])
    module = workspaces.src(rid) / f"{code.module}.py"
    module.write_text(module.read_text().replace(".lower()", ".upper()"))
    tester = TestgenAgent(workspaces, library, Sandbox())
    await env.run(
        tester.generate_tests, GenerateTestsInput(run_id=rid, module=code.module, prompt="x", pattern="slugify")
    )
    report = await env.run(tester.execute_tests, ExecuteTestsInput(run_id=rid, module=code.module))
    assert report.failed >= 3
    cleaned = await env.run(tester.cleanup_tests, RunRef(run_id=rid))
    assert cleaned.removed and not workspaces.tests(rid).exists()


async def test_tests_that_hang_are_killed_at_the_timeout(workspaces: Workspaces) -> None:
    _, rid, code = await generate(workspaces, PROMPTS["slugify"])
    tests = workspaces.tests(rid)
    tests.mkdir(parents=True)
    (tests / "test_hang.py").write_text("def test_forever():\n    while True:\n        pass\n")
    tester = TestgenAgent(workspaces, library, Sandbox())
    report = await env.run(tester.execute_tests, ExecuteTestsInput(run_id=rid, module=code.module, timeout_seconds=3))
    assert report.timed_out
    assert report.passed == 0


async def test_the_sandbox_has_no_network_no_secrets_and_a_read_only_system(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        os.environ["QUANTUM_TEST_SECRET"] = "s3cr3t"
        try:
            script = (
                "import os, socket, json\n"
                "out = {}\n"
                "try:\n"
                f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); out['net'] = 'open'\n"
                "except OSError as e:\n"
                "    out['net'] = 'blocked'\n"
                "out['secret'] = os.environ.get('QUANTUM_TEST_SECRET')\n"
                "try:\n"
                "    open('/usr/evil', 'w'); out['usr'] = 'written'\n"
                "except OSError:\n"
                "    out['usr'] = 'read-only'\n"
                "open('inside.txt', 'w').write('ok')\n"
                "print(json.dumps(out))\n"
            )
            (workspace / "probe.py").write_text(script)
            import sys

            sandbox = Sandbox()
            result = await sandbox.run([sys.executable, "probe.py"], workspace=workspace, timeout=30)
        finally:
            del os.environ["QUANTUM_TEST_SECRET"]
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"net": "blocked", "secret": None, "usr": "read-only"}
    assert (workspace / "inside.txt").read_text() == "ok"
    assert not Path("/usr/evil").exists()


# --- QSecure ----------------------------------------------------------------------------------------------------------


async def test_bandit_finds_no_criticals_in_the_patterns(workspaces: Workspaces) -> None:
    scanner = SecurityAgent(workspaces)
    for pattern, prompt in PROMPTS.items():
        _, rid, _ = await generate(workspaces, prompt)
        report = await env.run(scanner.scan, ScanInput(run_id=rid))
        assert report.tools == ["bandit", "detect-secrets"]
        assert report.criticals == 0, (pattern, report.findings)


async def test_bandit_criticals_are_reported(workspaces: Workspaces) -> None:
    source = {"ops.py": "import subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n"}
    _, rid, _ = await generate(workspaces, PROMPTS["semver"], source=source)
    report = await env.run(SecurityAgent(workspaces).scan, ScanInput(run_id=rid))
    assert report.criticals == 1
    (critical,) = [f for f in report.findings if f.critical]
    assert critical.file == "ops.py" and critical.line == 5
    assert critical.rule_id.startswith("B602")


# --- QInfra -----------------------------------------------------------------------------------------------------------


async def stream_names(nats_url: str) -> set[str]:
    nc = await nats.connect(nats_url)
    try:
        return {s.config.name for s in await nc.jetstream().streams_info()}
    finally:
        await nc.close()


def plan_input(rid: str, project: str, env_name: str, *specs: ResourceSpec) -> PlanInfraInput:
    return PlanInfraInput(run_id=rid, project=project, environment=env_name, resources=list(specs))


async def test_infra_plan_impact(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url)
    project = f"p{uuid.uuid4().hex[:6]}"
    directory = ResourceSpec(kind="directory", name="files")
    stream = ResourceSpec(kind="stream", name="jobs")
    big = ResourceSpec(kind="stream", name="big", max_bytes=2 * 1024**3)
    low = await env.run(agent.plan, plan_input(run_id(), project, "dev", directory))
    medium = await env.run(agent.plan, plan_input(run_id(), project, "dev", directory, stream))
    high_size = await env.run(agent.plan, plan_input(run_id(), project, "dev", big))
    high_prod = await env.run(agent.plan, plan_input(run_id(), project, "prod", directory))
    assert (low.impact, medium.impact, high_size.impact, high_prod.impact) == ("LOW", "MEDIUM", "HIGH", "HIGH")
    assert "GiB" in high_size.reasons[0] and "prod" in high_prod.reasons[0]
    assert [c.action for c in medium.changes] == ["create", "create"]


async def test_provision_then_destroy_for_real(tmp_path: Path, nats_url: str) -> None:
    agent = InfraAgent(tmp_path / "infra", nats_url)
    project, rid = f"p{uuid.uuid4().hex[:6]}", run_id()
    specs = [
        ResourceSpec(kind="directory", name="files"),
        ResourceSpec(kind="stream", name="jobs", subjects=[f"qinfra.{project}.jobs.>"]),
    ]
    plan = await env.run(agent.plan, plan_input(rid, project, "dev", *specs))
    result = await env.run(agent.provision, plan)
    again = await env.run(agent.provision, plan)  # idempotent
    assert result == again
    assert (tmp_path / "infra" / project / "files").is_dir()
    assert stream_name(project, "jobs") in await stream_names(nats_url)

    # a second run of the project finds them in its state: nothing to do
    other = await env.run(agent.plan, plan_input(run_id(), project, "dev", *specs))
    assert other.impact == "LOW" and {c.action for c in other.changes} == {"noop"}
    # another project's run finds a directory it does not own where its own would go: refused, not taken over
    (tmp_path / "infra" / "q").mkdir(parents=True)
    (tmp_path / "infra" / "q" / "files").mkdir()
    with pytest.raises(ApplicationError) as info:
        await env.run(agent.plan, plan_input(run_id(), "q", "dev", specs[0]))
    assert info.value.type == "InvalidRequest" and "not in the state" in str(info.value)

    destroyed = await env.run(agent.destroy, RunRef(run_id=rid))
    assert len(destroyed.removed) == 2
    assert not (tmp_path / "infra" / project / "files").exists()
    assert stream_name(project, "jobs") not in await stream_names(nats_url)
    assert (await env.run(agent.destroy, RunRef(run_id=rid))).removed == []


async def test_unreachable_nats_is_a_retryable_failure(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent = InfraAgent(tmp_path / "infra", f"nats://127.0.0.1:{port}")
    with pytest.raises(ApplicationError) as info:
        await env.run(agent.plan, plan_input(run_id(), "p", "dev", ResourceSpec(kind="directory", name="d")))
    assert info.value.type == "ProvisionFailure" and not info.value.non_retryable


# --- deploy and QSRE --------------------------------------------------------------------------------------------


def answers(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


async def test_deploy_verify_monitor_and_roll_back(workspaces: Workspaces, tmp_path: Path) -> None:
    _, rid, code = await generate(workspaces, PROMPTS["lru_cache"])
    deployer = DeployAgent(workspaces, tmp_path / "deployments")
    try:
        deployment = await env.run(
            deployer.deploy, DeployInput(run_id=rid, project="demo", environment="dev", release="r1")
        )
        assert pid_alive(deployment.pid) and answers(deployment.url)
        same = await env.run(deployer.deploy, DeployInput(run_id=rid, project="demo", environment="dev", release="r1"))
        assert same == deployment  # a retried deploy finds the running release

        verified = await env.run(deployer.verify, deployment)
        assert verified.healthy and verified.release_matches
        wrong = await env.run(deployer.verify, deployment.model_copy(update={"release": "r0"}))
        assert not wrong.release_matches and "expected 'r0'" in wrong.detail

        sre = SREAgent(tmp_path / "monitoring")
        setup = await env.run(
            sre.setup_monitoring,
            MonitoringInput(run_id=rid, project="demo", environment="dev", deployment_url=deployment.url),
        )
        target = json.loads(Path(setup.files[0]).read_text())
        assert target[0]["targets"] == [f"127.0.0.1:{deployment.port}"]
        assert "QuantumReleaseDown" in Path(setup.files[1]).read_text()
        torn = await env.run(sre.teardown_monitoring, RunRef(run_id=rid))
        assert sorted(torn.removed) == sorted(setup.files)
        assert (await env.run(sre.teardown_monitoring, RunRef(run_id=rid))).removed == []

        rolled = await env.run(deployer.rollback, RunRef(run_id=rid))
        assert rolled.stopped
        assert not pid_alive(deployment.pid) and not answers(deployment.url)
        assert not (await env.run(deployer.rollback, RunRef(run_id=rid))).stopped
        gone = await env.run(deployer.verify, deployment)
        assert not gone.healthy and "nothing answers" in gone.detail
    finally:
        deployer.stop_all()


async def test_monitoring_refuses_a_target_without_metrics(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sre = SREAgent(tmp_path / "monitoring")
    with pytest.raises(ApplicationError) as info:
        await env.run(
            sre.setup_monitoring,
            MonitoringInput(run_id=run_id(), project="d", environment="dev", deployment_url=f"http://127.0.0.1:{port}"),
        )
    assert info.value.type == "ToolFailure"
    assert not (tmp_path / "monitoring").exists() or not any(p.is_file() for p in (tmp_path / "monitoring").rglob("*"))


async def test_generated_code_carries_an_in_toto_provenance_statement(workspaces: Workspaces) -> None:
    from agents import provenance

    source = {"extra.py": "VALUE = 1\n"}
    agent, rid, code = await generate(workspaces, PROMPTS["semver"], source=source)
    assert code.provenance and code.prompt_sha256
    statement = json.loads(Path(code.provenance).read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert {s["name"]: s["digest"]["sha256"] for s in statement["subject"]} == {
        f"src/{f.path}": f.sha256 for f in code.files
    }
    build = statement["predicate"]["buildDefinition"]
    assert build["externalParameters"]["prompt_sha256"] == code.prompt_sha256
    assert PROMPTS["semver"] not in Path(code.provenance).read_text()  # the prompt itself stays out
    assert build["internalParameters"] == {
        "provider": "offline-patterns",
        "model": None,
        "pattern": "semver",
        "attempt": 1,
        "promptTokens": 0,
        "completionTokens": 0,
    }
    parents = {d["name"] for d in build["resolvedDependencies"]}
    assert parents == {"pattern:semver/module.py", "source:extra.py"}
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == rid

    root = workspaces.for_run(rid)
    assert provenance.verify(Path(code.provenance), root) == []
    (workspaces.src(rid) / "extra.py").write_text("VALUE = 2\n")
    assert provenance.verify(Path(code.provenance), root) == ["src/extra.py: changed since it was generated"]

    await env.run(agent.cleanup_code, RunRef(run_id=rid))
    assert not Path(code.provenance).exists()


async def test_mutants_tell_real_tests_from_tests_that_only_run_the_code(workspaces: Workspaces) -> None:
    from agents.mutation import mutants

    _, rid, code = await generate(workspaces, PROMPTS["semver"])
    source = (workspaces.src(rid) / f"{code.module}.py").read_text()
    found = mutants(source, 4)
    assert len(found) == 4 and len({m.source for m in found}) == 4
    assert all(m.source != source for m in found)
    assert found == mutants(source, 4)  # deterministic

    tester = TestgenAgent(workspaces, library, Sandbox())
    await env.run(
        tester.generate_tests, GenerateTestsInput(run_id=rid, module=code.module, prompt="x", pattern="semver")
    )
    good = await env.run(tester.execute_tests, ExecuteTestsInput(run_id=rid, module=code.module, mutants=4))
    assert good.mutants_total == 4 and good.mutation_score is not None
    assert good.mutation_score >= 0.5, good.surviving_mutants

    # tests that import and call the code but check nothing catch no mutant
    (workspaces.tests(rid) / f"test_{code.module}.py").write_text(
        f"from {code.module} import Version\n\n\ndef test_runs():\n    Version.parse('1.2.3')\n"
    )
    weak = await env.run(tester.execute_tests, ExecuteTestsInput(run_id=rid, module=code.module, mutants=4))
    assert weak.passed == 1 and weak.mutation_score is not None and weak.mutation_score <= 0.25
    assert len(weak.surviving_mutants) >= 3
