"""Deployments run what was built, through the real saga: the generated service answers on its port, a failed
verification leaves nothing of the run, and a second deploy that fails brings the first release back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError

from agents.deploy import request
from agents.workspace import run_dir_name

from .conftest import Harness, failing, status

pytestmark = [pytest.mark.workflow, pytest.mark.timeout(300)]

SLUGIFY = "slugify article titles into URL slugs"


def acceptance(project: str) -> dict[str, Any]:
    return {
        "examples": [
            {"http": {"path": "/healthz"}, "expect_json": {"status": "ok", "service": project}},
            {"http": {"method": "PUT", "path": "/items/x", "json": {"n": 7}}, "status": 201},
            {"http": {"path": "/items/x"}, "expect_json": {"n": 7}},
        ]
    }


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_the_generated_service_answers_the_acceptance_requests_on_its_port(harness: Harness) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(acceptance=acceptance(harness.project))
        result = await handle.result()
    try:
        assert result.status == "succeeded"
        url = str(result.outputs["deployment_url"])
        # the generated code itself: its /healthz names the project it was generated for, PUT then GET round-trips
        health = request(url)
        assert (health.status, health.origin) == (200, "service")
        assert json.loads(health.body) == {"status": "ok", "service": harness.project}
        assert request(url, "PUT", "/items/later", {"k": [1]}).status == 201
        assert json.loads(request(url, "GET", "/items/later").body) == {"k": [1]}
        assert json.loads(request(url, "GET", "/items/x").body) == {"n": 7}  # verification's PUT, on the live release
    finally:
        harness.agents.deploy.stop_all()


async def test_a_failed_verification_leaves_no_process_file_or_port_of_the_run(harness: Harness) -> None:
    async with harness.worker(failing("deploy.verify")):
        handle = await harness.start_pipeline()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)
    assert [(c.step, c.outcome) for c in view.compensations] == [
        ("rollback_deployment", "completed"),
        ("cleanup_tests", "completed"),
        ("cleanup_code", "completed"),
    ]
    run_dir = harness.settings.data_path / "deployments" / run_dir_name(handle.id)
    assert not run_dir.exists()
    assert not processes_mentioning(str(run_dir))
    assert request(str(view.outputs["deployment_url"])).status is None
    leftover = subprocess.run(["pgrep", "-f", "quantum_launcher.py"], capture_output=True, text=True)
    assert not [p for p in leftover.stdout.split() if str(run_dir) in Path(f"/proc/{p}/cmdline").read_text()]


async def test_a_second_deploy_whose_verification_fails_brings_the_first_back(harness: Harness) -> None:
    async with harness.worker():
        first = await (await harness.start_pipeline()).result()
    first_url = str(first.outputs["deployment_url"])
    try:
        assert request(first_url).origin == "service"
        async with harness.worker(failing("deploy.verify")):
            second = await harness.start_pipeline()
            with pytest.raises(WorkflowFailureError):
                await second.result()
            view = await status(second)
        assert view.compensations[0].step == "rollback_deployment"
        assert request(str(view.outputs["deployment_url"])).status is None  # the second is gone
        back = request(first_url)  # and the first answers again, at its URL, with its own code
        assert (back.status, back.origin, back.release) == (200, "service", first.outputs["release"])
        assert json.loads(back.body)["service"] == harness.project
    finally:
        harness.agents.deploy.stop_all()


async def test_a_library_is_released_as_a_wheel_verified_in_a_fresh_venv(harness: Harness) -> None:
    checks = {"examples": [{"call": "slugify", "args": ["Hello World"], "expect": "hello-world"}]}
    async with harness.worker():
        result = await (await harness.start_pipeline(prompt=SLUGIFY, acceptance=checks)).result()
    try:
        assert result.status == "succeeded"
        health = json.loads(request(str(result.outputs["deployment_url"])).body)
        assert health["kind"] == "library" and health["wheel"].endswith("-py3-none-any.whl")
        wheels = list((harness.settings.data_path / "deployments").glob("*/artifact/dist/*.whl"))
        assert [w.name for w in wheels] == [health["wheel"]]
    finally:
        harness.agents.deploy.stop_all()
