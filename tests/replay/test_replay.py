"""Recorded histories of real runs replay against today's workflow code.

A change that would break runs in flight (a reordered activity, a removed signal, a new command in the middle)
raises ``NondeterminismError`` here. To record new histories after an intended, versioned change::

    QUANTUM_RECORD_HISTORIES=1 python -m pytest tests/workflows/test_record_histories.py

Histories named ``v1-*`` were recorded before runs published outbound events, ``v2-*`` before compensations waited
for a cancelled activity to stop and before reviewer names were compared normalised, ``v3-*`` before the release's
findings were recorded and infrastructure had a state and project chains, ``v4-*`` before reviews were bound to a
digest, signed and appended to the audit stream; keep them: they prove that runs in
flight across those changes still replay (through ``workflow.patched``). The ``*-repair*`` histories are model
runs of the repair loop (recorded against a scripted OpenAI-compatible server), ``codegen-tested`` a code generation
with tests on, ``pipeline-policy`` a run under the deployment's reviewer groups and gate defaults and
``pipeline-expired`` one whose gate expired. ``v5-*`` were recorded before outbound events were published through
local activities, ``v6-*`` before they rode on the activities a run schedules (``workflows.outbox``), ``v7-*`` before
gates issued challenges, verified signatures with OpenSSL and kept refused reviews out of the audit chain
(``reviews-challenged``). ``pipeline-signed`` is a run with reviewers' keys: a badly signed review signal refused,
then an approval signed over the gate's challenge counted by Update.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from quantum.worker import new_replayer
from workflows.patches import CARRIED_EVENTS_PATCH, LATER, LOCAL_EVENTS_PATCH, REVIEW_CHALLENGE_PATCH

HISTORIES = Path(__file__).parent / "histories"
FILES = sorted(HISTORIES.glob("*.json"))


def test_histories_are_recorded() -> None:
    """Runs of today's code, and runs of earlier versions that replay through the patches."""
    names = {f.stem for f in FILES}
    kinds = {"pipeline-succeeded", "pipeline-compensated", "pipeline-rejected", "pipeline-cancelled"}
    assert kinds | {"pipeline-cancelled-mid-stage", "pipeline-repaired", "pipeline-repair-exhausted"} <= names
    assert {"codegen-succeeded", "codegen-tested"} <= names
    assert {f"v1-{kind}" for kind in kinds} <= names
    assert {f"v2-{kind}" for kind in kinds} <= names
    assert {f"v3-{kind}" for kind in kinds} | {"infra-chained"} <= names
    assert {f"v4-{kind}" for kind in kinds} | {"v4-infra-chained"} <= names
    assert {"pipeline-policy", "pipeline-expired"} <= names
    assert {f"v5-{kind}" for kind in kinds} | {"v5-codegen-succeeded", "v5-pipeline-policy"} <= names
    assert {f"v6-{kind}" for kind in kinds} | {"v6-codegen-succeeded", "v6-pipeline-policy"} <= names
    assert {f"v7-{kind}" for kind in kinds} | {"v7-codegen-succeeded", "v7-pipeline-policy"} <= names
    assert "pipeline-signed" in names


def workflow_id(path: Path) -> str:
    """The recorded run's id, where its code derives names from it (a child workflow's id), else the file's name."""
    recorded = path.with_suffix(".workflow-id")
    return recorded.read_text().strip() if recorded.exists() else path.stem


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
async def test_history_replays_without_nondeterminism(path: Path) -> None:
    history = WorkflowHistory.from_json(workflow_id(path), json.loads(path.read_text()))
    replayer = new_replayer()
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


@workflow.defn(name="DevSecOpsPipelineWorkflow", sandboxed=False)
class PipelineThatSkipsEveryStage:
    """A workflow of the same name whose code no longer matches the recorded runs."""

    @workflow.run
    async def run(self, request: dict[str, Any]) -> None:
        await workflow.sleep(1)


async def test_a_changed_workflow_fails_replay() -> None:
    """The check can fail: a recorded history against changed code is rejected."""
    path = HISTORIES / "pipeline-succeeded.json"
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    replayer = Replayer(workflows=[PipelineThatSkipsEveryStage], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert isinstance(result.replay_failure, NondeterminismError)


def markers(path: Path) -> list[tuple[int, str]]:
    """The markers of a recorded history, in order: (event id, patch id or ``local activity``)."""
    found = []
    for event in json.loads(path.read_text())["events"]:
        attributes = event.get("markerRecordedEventAttributes")
        if attributes is None:
            continue
        if attributes["markerName"] == "core_local_activity":
            found.append((int(event["eventId"]), "local activity"))
        elif attributes["markerName"] == "core_patch":
            data = attributes["details"]["patch-data"]["payloads"][0]["data"]
            found.append((int(event["eventId"]), json.loads(base64.b64decode(data))["id"]))
    return found


LOCAL_RUNS = [f for f in FILES if any(name == LOCAL_EVENTS_PATCH for _, name in markers(f))]


def test_runs_that_publish_through_local_activities_are_recorded() -> None:
    assert {"pipeline-succeeded", "pipeline-rejected", "codegen-succeeded", "infra-succeeded"} <= {
        f.stem for f in LOCAL_RUNS
    }
    assert {"v5-pipeline-succeeded", "v4-pipeline-succeeded"}.isdisjoint(f.stem for f in LOCAL_RUNS)


CARRIED_RUNS = [f for f in FILES if any(name == CARRIED_EVENTS_PATCH for _, name in markers(f))]


def test_runs_whose_events_ride_on_their_activities_are_recorded() -> None:
    """Today's runs carry their events on their activities; those recorded before publish each by a local activity
    of its own, and keep doing so on replay."""
    today = {f.stem for f in FILES if not f.stem.startswith("v")}
    carried = {f.stem for f in CARRIED_RUNS}
    assert today <= carried and {"v7-pipeline-succeeded", "v7-codegen-succeeded"} <= carried
    assert {"v6-pipeline-succeeded", "v6-codegen-succeeded"} <= {f.stem for f in LOCAL_RUNS} - carried


def test_runs_with_gate_challenges_are_recorded() -> None:
    """Today's runs take the challenge patch; those recorded before judge, record and append as they did."""
    challenged = {f.stem for f in FILES if any(name == REVIEW_CHALLENGE_PATCH for _, name in markers(f))}
    today = {f.stem for f in FILES if not f.stem.startswith("v")}
    assert challenged == today and "pipeline-signed" in challenged


@pytest.mark.parametrize("path", LOCAL_RUNS, ids=[f.stem for f in LOCAL_RUNS])
def test_runs_that_publish_locally_ask_for_their_patches_before_the_first_local_activity(path: Path) -> None:
    """Such a run follows every earlier patch without asking (no marker, no search attribute update each), and asks
    for the later ones at its start: a patch first asked for after a local activity's result could be asked, on
    replay, one workflow task before the one that recorded it."""
    found = markers(path)
    first_local = min(event for event, name in found if name == "local activity")
    patches = {name: event for event, name in found if name != "local activity"}
    later = [patch for patch in LATER if patch in patches]
    assert set(patches) == {LOCAL_EVENTS_PATCH, *later}
    assert later == list(LATER[: len(later)])  # a run recorded before a later patch lacks it and those after it
    assert all(event < first_local for event in patches.values())
