"""QSecure through the saga on the real dev server: secrets stop a run at the security gate, the findings are
compared with the last deployed release, the SARIF report is kept with the run and shown by the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError

from agents.workspace import Workspaces
from events.models import ReviewDecision
from tests.cli.test_plain_text import MARKUP

from .conftest import Harness, status, wait_for_gate

pytestmark = pytest.mark.workflow

QUANTUM = Path(sys.executable).parent / "quantum"
CREDENTIALS = {
    "aws_config.py": 'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLF"\n'
    'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEZ"\n',
}
RELAXED = {"min_coverage": 0}


def review(gate: str, approved: bool) -> ReviewDecision:
    return ReviewDecision(gate=gate, reviewer="bob", approved=approved, comment="")


def sarif_of(harness: Harness, run_id: str) -> dict:  # type: ignore[type-arg]
    path = Workspaces(harness.settings.data_path / "workspaces").for_run(run_id) / "security" / "security.sarif"
    return json.loads(path.read_text())


def show_findings(harness: Harness, temporal_address: str, run_id: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env.update(
        QUANTUM_DATA_DIR=str(harness.settings.data_path), QUANTUM_TEMPORAL_ADDRESS=temporal_address, COLUMNS="200"
    )
    return subprocess.run(
        [str(QUANTUM), "pipeline", "show", run_id, "--findings"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        cwd=harness.settings.data_path,
    )


async def test_a_leaked_aws_key_stops_at_the_gate_and_a_rejection_compensates(
    harness: Harness, temporal_address: str
) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(source=CREDENTIALS, test_policy=RELAXED)
        view = await wait_for_gate(handle, "security")
        outputs = view.outputs
        assert outputs["findings_critical"] >= 2 and outputs["criticals"] == outputs["findings_critical"]
        assert {"findings_high", "findings_medium", "findings_low"} <= set(outputs)
        assert outputs["new_findings"] == outputs["findings"] and outputs["fixed_findings"] == 0
        reason = str(outputs["security_gate_reason"])
        assert "critical findings" in reason and "AWSKeyDetector aws_config.py:1 [new]" in reason
        assert "no release deployed yet" in reason

        log = sarif_of(harness, handle.id)
        assert log["version"] == "2.1.0"
        secrets = next(run for run in log["runs"] if run["tool"]["driver"]["name"] == "detect-secrets")
        assert {r["ruleId"] for r in secrets["results"]} >= {"AWSKeyDetector", "KeywordDetector"}
        assert all(r["level"] == "error" and r["baselineState"] == "new" for r in secrets["results"])

        # the CLI shows the findings from the report, text from the scanned code as text
        secrets["results"][0]["message"]["text"] = MARKUP
        Path(str(outputs["security_report"])).write_text(json.dumps(log))
        shown = await asyncio.to_thread(show_findings, harness, temporal_address, handle.id)  # the worker runs here
        assert shown.returncode == 0, shown.stderr
        assert MARKUP in shown.stdout and "AWSKeyDetector" in shown.stdout and "awaiting_review" in shown.stdout

        await handle.signal("review", review("security", approved=False))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)
    assert view.status == "rejected"
    assert [(c.step, c.outcome) for c in view.compensations] == [
        ("cleanup_tests", "completed"),
        ("cleanup_code", "completed"),
    ]
    workspaces = Workspaces(harness.settings.data_path / "workspaces")
    assert not workspaces.src(handle.id).exists()
    assert view.stages["deploy_application"] == "pending"


async def test_the_next_run_shows_only_what_is_new_since_the_deployed_release(harness: Harness) -> None:
    releases = harness.settings.data_path / "security" / "releases" / harness.project / "dev.json"
    async with harness.worker():
        first = await harness.start_pipeline(security_policy={"gate_at": "never"})
        result = await first.result()
        assert result.status == "succeeded" and result.outputs["new_findings"] == result.outputs["findings"]
        baseline = json.loads(releases.read_text())
        assert baseline["run_id"] == first.id and baseline["release"] == result.outputs["release"]
        before = {f["fingerprint"] for f in baseline["findings"]}
        assert len(before) == result.outputs["findings"]

        second = await harness.start_pipeline(source=CREDENTIALS, test_policy=RELAXED)
        view = await wait_for_gate(second, "security")
        log = sarif_of(harness, second.id)
        results = [r for run in log["runs"] for r in run["results"]]
        states = {r["partialFingerprints"]["quantumFingerprint/v1"]: r["baselineState"] for r in results}
        new = {fp for fp, state in states.items() if state == "new"}
        assert {fp for fp, state in states.items() if state == "unchanged"} == before
        # only the leaked key is new
        new_files = {
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in results
            if r["baselineState"] == "new"
        }
        assert new_files == {"aws_config.py"}
        assert view.outputs["new_findings"] == len(new) and view.outputs["fixed_findings"] == 0
        since = f"({len(new)} new, 0 fixed since release {str(result.outputs['release'])[:12]})"
        assert since in str(view.outputs["security_gate_reason"])
        await second.signal("review", review("security", approved=False))
        with pytest.raises(WorkflowFailureError):
            await second.result()
    assert json.loads(releases.read_text())["run_id"] == first.id  # a rejected run is no release


async def test_a_request_can_raise_or_lower_the_bar(harness: Harness) -> None:
    async with harness.worker():
        never = await harness.start_pipeline(
            source=CREDENTIALS, test_policy=RELAXED, security_policy={"gate_at": "never"}
        )
        strict = await harness.start_pipeline(
            source=CREDENTIALS, test_policy=RELAXED, security_policy={"gate_at": "low"}
        )
        view = await wait_for_gate(strict, "security")
        reason = str(view.outputs["security_gate_reason"])
        assert f"{view.outputs['findings']} findings at low or above" in reason
        await strict.signal("review", review("security", approved=False))
        with pytest.raises(WorkflowFailureError):
            await strict.result()
        with contextlib.suppress(WorkflowFailureError):  # how it ends past the scan is not this test's concern
            await never.result()
        view = await status(never)
    assert view.outputs["findings_critical"] >= 2
    assert "security" not in view.gates and view.stages["security_scan"] == "succeeded"
