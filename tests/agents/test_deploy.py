"""Deployments run what was built: a service is its own generated code in the sandbox, a library is a wheel.

Real releases against the real state: the service answers with its own code, has no network beyond its socket and
no secrets; a library's wheel installs into a fresh venv; a rollback brings back the release it replaced; what the
service writes in its release directory never reaches the worker.
"""

from __future__ import annotations

import json
import os
import socket
import textwrap
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from agents.codegen import CodegenAgent, PatternLibrary
from agents.deploy import DeployAgent, pid_alive, request
from agents.models import Acceptance, DeployInput, GenerateCodeInput, RunRef, VerifyInput
from agents.workspace import Workspaces, run_dir_name

pytestmark = pytest.mark.timeout(180)
env = ActivityEnvironment()
library = PatternLibrary()
HTTP_PROMPT = "an HTTP JSON service with a health endpoint"
SLUGIFY = "slugify article titles into URL slugs"
CANARY = "sk-canary-deploy-77ab"

HOSTILE_SERVICE = """
import json, os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "reached"
    except OSError as err:
        return f"failed: {err}"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = {"status": "ok", "service": "spy"}
        elif self.path.startswith("/probe/"):
            port = int(self.path.rsplit("/", 1)[1])
            body = {"internet": reach("1.1.1.1", 80), "loopback": reach("127.0.0.1", port),
                    "env": dict(os.environ), "uid": os.getuid(), "cwd": os.getcwd()}
        elif self.path.startswith("/plant/"):
            # hostile data in the release dir: links to the host's files, a fake socket, rewritten code
            target = self.path.split("/plant/", 1)[1]
            for name in ("quantum_launcher.py", "src/spy.py", "service.sock", "evil"):
                try:
                    os.remove(name)
                except OSError:
                    pass
                os.symlink("/" + target, name)
            body = {"planted": True}
        else:
            body = {"error": "not found"}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def make_server(port=0, host="127.0.0.1"):
    return ThreadingHTTPServer((host, port), Handler)
"""


@pytest.fixture
def workspaces(tmp_path: Path) -> Workspaces:
    return Workspaces(tmp_path / "workspaces")


@pytest.fixture
async def deployer(workspaces: Workspaces, tmp_path: Path) -> AsyncIterator[DeployAgent]:
    agent = DeployAgent(workspaces, tmp_path / "deployments")
    try:
        yield agent
    finally:
        agent.stop_all()


async def generated(workspaces: Workspaces, run_id: str, project: str, prompt: str) -> str:
    code = await env.run(
        CodegenAgent(workspaces, library).generate_code,
        GenerateCodeInput(run_id=run_id, project=project, prompt=prompt),
    )
    return code.module


def answers(url: str) -> bool:
    return request(url).status is not None


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


async def test_a_service_is_served_by_its_own_generated_code(workspaces: Workspaces, deployer: DeployAgent) -> None:
    module = await generated(workspaces, "pipeline-svc", "shop", HTTP_PROMPT)
    deployment = await env.run(
        deployer.deploy, DeployInput(run_id="pipeline-svc", project="shop", environment="dev", release="rel-1")
    )
    assert deployment.kind == "service" and deployment.module == module
    # the generated code answers: its /healthz names the project it was generated for, and it keeps what is PUT
    health = request(deployment.url)
    assert (health.status, health.origin, health.release) == (200, "service", "rel-1")
    assert json.loads(health.body) == {"status": "ok", "service": "shop"}
    assert request(deployment.url, "PUT", "/items/x", {"n": 1}).status == 201
    assert json.loads(request(deployment.url, "GET", "/items/x").body) == {"n": 1}
    # ... from inside bubblewrap, as a child of the release host
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in descendants(deployment.pid)]
    assert any(b"bwrap" in c for c in commands) and any(b"quantum_launcher.py" in c for c in commands)

    acceptance = Acceptance.model_validate(
        {
            "examples": [
                {"http": {"method": "PUT", "path": "/items/y", "json": {"a": [1, 2]}}, "status": 201},
                {"http": {"path": "/items/y"}, "expect_json": {"a": [1, 2]}},
                {"http": {"path": "/items/nope"}, "status": 404},
            ]
        }
    )
    verified = await env.run(deployer.verify, VerifyInput(**deployment.model_dump(), acceptance=acceptance))
    assert verified.healthy and verified.release_matches and verified.checked == 3, verified
    wrong = Acceptance.model_validate({"examples": [{"http": {"path": "/items/y"}, "expect_json": {"a": [2]}}]})
    failed = await env.run(deployer.verify, VerifyInput(**deployment.model_dump(), acceptance=wrong))
    assert not failed.healthy
    assert failed.detail == "example 0: GET /items/y answered 200 {'a': [1, 2]}, expected 200 {'a': [2]}"


async def test_the_service_has_no_network_beyond_its_socket_and_no_secrets(
    workspaces: Workspaces, deployer: DeployAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTUM_LLM_API_KEY", CANARY)
    src = workspaces.src("pipeline-spy")
    src.mkdir(parents=True)
    (src / "spy.py").write_text(textwrap.dedent(HOSTILE_SERVICE))
    listener = socket.create_server(("127.0.0.1", 0))  # a port of the worker's host the service must not reach
    try:
        port = listener.getsockname()[1]
        deployment = await env.run(
            deployer.deploy, DeployInput(run_id="pipeline-spy", project="spy", environment="dev", release="r")
        )
        seen = json.loads(request(deployment.url, "GET", f"/probe/{port}").body)
        assert seen["internet"].startswith("failed") and seen["loopback"].startswith("failed"), seen
        assert CANARY not in json.dumps(seen["env"]) and seen["uid"] == 65534
        assert set(seen["env"]) <= {"PATH", "HOME", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PYTHONUNBUFFERED",
                                    "PWD", "LC_CTYPE"}  # fmt: skip
        for pid in [deployment.pid, *descendants(deployment.pid)]:
            assert CANARY.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        listener.close()

    # hostile data in the release dir: links to the worker's files, a fake socket, its own code rewritten
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    assert json.loads(request(deployment.url, "GET", f"/plant/{precious}").body) == {"planted": True}
    assert request(deployment.url).status == 200  # the host still reaches the service on its own socket
    deployer.stop_all()
    assert not answers(deployment.url)
    assert deployer.restore() == [("pipeline-spy", "started again")]
    for _ in range(100):
        if request(deployment.url).origin == "service":
            break
        await asyncio_sleep(0.1)
    assert json.loads(request(deployment.url).body) == {"status": "ok", "service": "spy"}  # its code, from the artifact
    assert precious.read_text() == "keep me" and not precious.is_symlink()
    release = tmp_path / "deployments" / run_dir_name("pipeline-spy") / "release"
    assert not (release / "evil").exists() and not (release / "src" / "spy.py").is_symlink()


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def test_a_library_is_released_as_a_wheel_and_verified_in_a_fresh_venv(
    workspaces: Workspaces, deployer: DeployAgent
) -> None:
    module = await generated(workspaces, "pipeline-lib", "slugs", SLUGIFY)
    deployment = await env.run(
        deployer.deploy, DeployInput(run_id="pipeline-lib", project="slugs", environment="dev", release="abc123")
    )
    assert deployment.kind == "library" and deployment.artifact
    wheel = Path(deployment.artifact)
    assert wheel.name == "slugs-1.0.0+rabc123-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{module}.py" in names and "slugs-1.0.0+rabc123.dist-info/RECORD" in names
    health = json.loads(request(deployment.url).body)
    assert health == {"status": "ok", "release": "abc123", "kind": "library", "wheel": wheel.name}

    smoke = await env.run(deployer.verify, VerifyInput(**deployment.model_dump()))
    assert smoke.healthy and smoke.checked == 1, smoke  # imported from the venv
    acceptance = Acceptance.model_validate(
        {
            "examples": [
                {"call": "slugify", "args": ["Hello World"], "expect": "hello-world"},
                {"expr": "slugify('A  B')", "expect": "a-b"},
                {"call": "slugify", "args": ["Hello World"], "expect": "Hello_World"},
            ]
        }
    )
    verified = await env.run(deployer.verify, VerifyInput(**deployment.model_dump(), acceptance=acceptance))
    assert not verified.healthy and verified.checked == 3
    assert verified.failures == ["example 2: slugify('Hello World') returned 'hello-world', expected 'Hello_World'"]
    # a wheel that does not install fails verification
    wheel.write_bytes(b"not a zip")
    broken = await env.run(deployer.verify, VerifyInput(**deployment.model_dump()))
    assert not broken.healthy and "did not install" in broken.detail


async def test_a_rollback_brings_back_the_release_it_replaced(workspaces: Workspaces, deployer: DeployAgent) -> None:
    await generated(workspaces, "pipeline-one", "shop", HTTP_PROMPT)
    await generated(workspaces, "pipeline-two", "shop", HTTP_PROMPT)
    await generated(workspaces, "pipeline-other", "other", HTTP_PROMPT)
    first = await env.run(
        deployer.deploy, DeployInput(run_id="pipeline-one", project="shop", environment="dev", release="one")
    )
    other = await env.run(
        deployer.deploy, DeployInput(run_id="pipeline-other", project="other", environment="dev", release="o")
    )
    second = await env.run(
        deployer.deploy, DeployInput(run_id="pipeline-two", project="shop", environment="dev", release="two")
    )
    assert not answers(first.url) and not pid_alive(first.pid)  # superseded
    assert request(second.url).release == "two" and request(other.url).release == "o"

    rolled = await env.run(deployer.rollback, RunRef(run_id="pipeline-two"))
    assert rolled.stopped and "pipeline-one serves again" in rolled.detail
    assert not answers(second.url)
    back = request(first.url)
    assert (back.status, back.release, back.origin) == (200, "one", "service")
    assert request(other.url).release == "o"  # another project is untouched
    again = await env.run(deployer.rollback, RunRef(run_id="pipeline-two"))
    assert not again.stopped and again.detail == "nothing deployed"
    assert request(first.url).release == "one"
    # rolling back the first deploy of a project brings nothing back, and leaves no file of it
    await env.run(deployer.rollback, RunRef(run_id="pipeline-one"))
    assert not answers(first.url)
    assert {r.deployment.run_id for r in deployer.records()} == {"pipeline-other"}


async def test_stop_keeps_the_record_and_restore_leaves_it_stopped(
    workspaces: Workspaces, deployer: DeployAgent, tmp_path: Path
) -> None:
    await generated(workspaces, "pipeline-stop", "shop", HTTP_PROMPT)
    deployment = await env.run(
        deployer.deploy, DeployInput(run_id="pipeline-stop", project="shop", environment="dev", release="s")
    )
    assert deployer.stop("pipeline-stop")
    assert not answers(deployment.url) and not pid_alive(deployment.pid)
    assert [r.state for r in deployer.records()] == ["stopped"]
    assert DeployAgent(workspaces, tmp_path / "deployments").restore() == [("pipeline-stop", "stopped, left stopped")]
    assert not answers(deployment.url)
    assert not os.path.exists(tmp_path / "deployments" / run_dir_name("pipeline-stop") / "host" / "service.sock")


async def test_the_deployments_command_lists_and_stops_releases(
    workspaces: Workspaces, deployer: DeployAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from quantum.cli import app

    workspaces = Workspaces(tmp_path / "data" / "workspaces")
    agent = DeployAgent(workspaces, tmp_path / "data" / "deployments")
    await generated(workspaces, "pipeline-cli\x1b[31m", "shop", HTTP_PROMPT)
    deployment = await env.run(
        agent.deploy, DeployInput(run_id="pipeline-cli\x1b[31m", project="shop", environment="dev", release="c")
    )
    try:
        monkeypatch.setenv("QUANTUM_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.chdir(tmp_path)
        listed = CliRunner().invoke(app, ["deployments", "list"], terminal_width=300)
        assert listed.exit_code == 0, listed.output
        assert "pipeline-cli\\x1b[31m" in listed.output and "\x1b" not in listed.output  # printed as plain text
        assert "service" in listed.output and "active" in listed.output and "running" in listed.output
        stopped = CliRunner().invoke(app, ["deployments", "stop", "pipeline-cli\x1b[31m"])
        assert stopped.exit_code == 0 and "stopped" in stopped.output, stopped.output
        assert not answers(deployment.url)
        assert "not running" in CliRunner().invoke(app, ["deployments", "list"], terminal_width=300).output
        missing = CliRunner().invoke(app, ["deployments", "stop", "pipeline-none"])
        assert missing.exit_code == 1
    finally:
        agent.stop_all()
