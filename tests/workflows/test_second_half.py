"""The second half of the saga end to end, checked against the real state rather than the run's own account: the
generated service on its port, the stream and the KV bucket on the real NATS, the alert rules through promtool,
and, after a failure at verification, nothing of the run left anywhere."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nats
import pytest
from nats.js.errors import BucketNotFoundError, NotFoundError
from temporalio.client import WorkflowFailureError

from agents.deploy import request
from agents.infra import kv_bucket_name, stream_name
from agents.workspace import run_dir_name

from .conftest import Harness, failing, status
from .test_deployments import acceptance, processes_mentioning

pytestmark = [pytest.mark.workflow, pytest.mark.timeout(300)]

INFRA = [
    {"kind": "stream", "name": "events"},
    {"kind": "kv", "name": "settings", "depends_on": ["events"]},
    {"kind": "directory", "name": "assets"},
]


async def bus_has(nats_url: str, project: str) -> tuple[bool, bool]:
    """Whether the run's stream and KV bucket exist on the real server."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(stream_name(project, "events"))
            stream = True
        except NotFoundError:
            stream = False
        try:
            await js.key_value(kv_bucket_name(project, "settings"))
            bucket = True
        except (BucketNotFoundError, NotFoundError):
            bucket = False
        return stream, bucket
    finally:
        await nc.close()


async def test_a_successful_run_leaves_a_live_service_its_resources_and_checked_rules(
    harness: Harness, nats_url: str
) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(infrastructure=INFRA, acceptance=acceptance(harness.project))
        result = await handle.result()
    try:
        assert result.status == "succeeded"
        url = str(result.outputs["deployment_url"])
        health = request(url)  # the generated code answers, not a stand-in
        assert (health.status, health.origin) == (200, "service")
        assert json.loads(health.body)["service"] == harness.project
        assert json.loads(request(url, "GET", "/items/x").body) == {"n": 7}  # what verification PUT
        assert await bus_has(nats_url, harness.project) == (True, True)
        assert harness.infra_dir("assets").is_dir()
        rules = sorted((harness.settings.data_path / "monitoring" / "prometheus" / "rules").glob("*.yml"))
        assert len(rules) == 1
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool is not installed (make system-deps installs Debian's prometheus)")
        checked = subprocess.run([promtool, "check", "rules", str(rules[0])], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        harness.agents.deploy.stop_all()


async def test_a_failure_at_verification_leaves_nothing_of_the_run(harness: Harness, nats_url: str) -> None:
    async with harness.worker(failing("deploy.verify")):
        handle = await harness.start_pipeline(infrastructure=INFRA)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)
    assert [(c.step, c.outcome) for c in view.compensations] == [
        ("rollback_deployment", "completed"),
        ("destroy_infra", "completed"),
        ("cleanup_tests", "completed"),
        ("cleanup_code", "completed"),
    ]
    assert await bus_has(nats_url, harness.project) == (False, False)
    assert not harness.infra_dir("assets").exists()
    data = harness.settings.data_path
    run_dir = run_dir_name(handle.id)
    assert not (data / "deployments" / run_dir).exists()
    assert not processes_mentioning(run_dir)
    assert request(str(view.outputs["deployment_url"])).status is None  # the port answers no more
    assert not list((data / "workspaces").glob(f"{run_dir}/src"))
    assert not [p for p in Path(data / "monitoring").rglob("*") if run_dir in p.name]
