"""Records the histories that tests/replay replays. Runs only with QUANTUM_RECORD_HISTORIES=1."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError

from events.models import ReviewDecision
from tests.agents.openai_server import OpenAIServer

from .conftest import Harness, failing, files, gate_review, harness_with, wait_for, wait_for_gate
from .test_repair import PROMPT, RIGHT, WRONG, suite

pytestmark = pytest.mark.skipif(
    not os.environ.get("QUANTUM_RECORD_HISTORIES"), reason="records replay histories on request only"
)

HISTORIES = Path(__file__).parent.parent / "replay" / "histories"


async def save(handle: Any, name: str) -> None:
    history = await handle.fetch_history()
    HISTORIES.mkdir(parents=True, exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
    (HISTORIES / f"{name}.workflow-id").write_text(handle.id + "\n")


async def test_record(harness: Harness) -> None:
    infra = [{"kind": "directory", "name": "assets"}, {"kind": "stream", "name": "audit"}]
    async with harness.worker():
        handle = await harness.start_pipeline(project=f"{harness.project}-a", infrastructure=infra, environment="prod")
        await wait_for_gate(handle, "infra")
        await handle.signal("review", ReviewDecision(gate="infra", reviewer="bob", approved=True))
        await wait_for_gate(handle, "deploy")
        await handle.signal("review", ReviewDecision(gate="deploy", reviewer="alice", approved=True))
        await handle.signal("review", ReviewDecision(gate="deploy", reviewer="bob", approved=True))
        await handle.result()
        await save(handle, "pipeline-succeeded")

        handle = await harness.start_pipeline(environment="prod")
        await wait_for_gate(handle, "deploy")
        # refused: the requester under another case, and a comment over its bound
        await handle.signal("review", ReviewDecision(gate="deploy", reviewer="ALICE", approved=True))
        await handle.signal(
            "review", ReviewDecision(gate="deploy", reviewer="carol", approved=True, comment="x" * 3000)
        )
        await handle.signal("review", ReviewDecision(gate="deploy", reviewer="bob", approved=False))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        await save(handle, "pipeline-rejected")

        handle = await harness.start_pipeline(project=f"{harness.project}-d", environment="prod", infrastructure=infra)
        await wait_for_gate(handle, "infra")
        await handle.signal("review", ReviewDecision(gate="infra", reviewer="bob", approved=True))
        await wait_for_gate(handle, "deploy")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        await save(handle, "pipeline-cancelled")

        # cancelled while the sandbox runs: compensations wait until the activity has stopped
        slow = "import time\ntime.sleep(30)\n"
        handle = await harness.start_pipeline(source={"sitecustomize.py": slow})
        await wait_for(handle, lambda v: v.stages["execute_tests"] == "running")
        await asyncio.sleep(3)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        await save(handle, "pipeline-cancelled-mid-stage")

        handle = await harness.start(
            "CodeGenerationWorkflow",
            {"project": "slugs", "prompt": "a slugify helper", "requested_by": "alice"},
            prefix="codegen",
        )
        await handle.result()
        await save(handle, "codegen-succeeded")

        handle = await harness.start(
            "InfraProvisionWorkflow",
            {"project": f"{harness.project}-c", "requested_by": "alice", "resources": infra},
            prefix="infra",
        )
        await handle.result()
        await save(handle, "infra-succeeded")

        chained = [
            {"kind": "stream", "name": "audit", "from_project": f"{harness.project}-c"},
            {"kind": "directory", "name": "work", "depends_on": ["audit"]},
        ]
        handle = await harness.start(
            "InfraProvisionWorkflow",
            {"project": f"{harness.project}-e", "requested_by": "alice", "resources": chained},
            prefix="infra",
        )
        await handle.result()
        await save(handle, "infra-chained")

    async with harness.worker(failing("deploy.verify"), failing("infra.destroy")):
        # another project: the first run's resources still exist and would make this plan HIGH
        handle = await harness.start_pipeline(project=f"{harness.project}-b", infrastructure=infra)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        await save(handle, "pipeline-compensated")


async def test_record_the_repair_loop(model: tuple[Harness, OpenAIServer]) -> None:
    """A model run repaired on its second attempt, one that runs out of attempts, and a tested code generation."""
    harness, server = model
    module = harness.project.replace("-", "_")
    code, tests = files(**{f"{module}.py": WRONG}), files(**{f"test_{module}.py": suite(module)})
    server.script(code, tests, files(**{f"{module}.py": RIGHT}), tests, code, tests, code, tests)
    async with harness.worker():
        handle = await harness.start_pipeline(prompt=PROMPT)
        await handle.result()
        await save(handle, "pipeline-repaired")

        handle = await harness.start_pipeline(prompt=PROMPT, max_attempts=2)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        await save(handle, "pipeline-repair-exhausted")

        server.script(files(**{"slugs.py": RIGHT}), files(**{"test_slugs.py": suite("slugs")}))
        request = {"project": "slugs", "prompt": PROMPT, "requested_by": "alice", "tested": True}
        handle = await harness.start("CodeGenerationWorkflow", request, prefix="codegen")
        await handle.result()
        await save(handle, "codegen-tested")


async def test_record_the_deployments_review_policy(client: Client, nats_url: str, tmp_path: Path) -> None:
    """Groups and gate defaults from the worker's settings, a gate rule letting the requester review; and a gate
    that expires."""
    settings = {
        "reviewer_groups": {"release": ["ann", "bob"]},
        "review_defaults": {"deploy": {"groups": ["release"], "required_approvals": 2}},
    }
    async with harness_with(client, nats_url, tmp_path, **settings) as harness, harness.worker():
        policy = {"gates": {"deploy": {"requester_may_review": True}}}
        handle = await harness.start_pipeline(environment="prod", requested_by="ann", approval_policy=policy)
        await wait_for_gate(handle, "deploy")
        await handle.signal("review", ReviewDecision(gate="deploy", reviewer="carol", approved=True))
        await handle.signal("review", ReviewDecision(gate="deploy", reviewer="ann", approved=True))
        await handle.signal("review", ReviewDecision(gate="deploy", reviewer="bob", approved=True))
        await handle.result()
        await save(handle, "pipeline-policy")

        expiring = {"gates": {"deploy": {"timeout_seconds": 2}}, "reviewers": ["bob"]}
        handle = await harness.start_pipeline(environment="prod", approval_policy=expiring)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        await save(handle, "pipeline-expired")


async def test_record_signed_reviews(client: Client, nats_url: str, tmp_path: Path) -> None:
    """With reviewers' keys: a review signal signed with another key refused, then bob's approval signed over the
    gate opening's challenge counted by Update."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from quantum.cli.review import signed

    from .test_review_gates import BOB, MALLORY, key_folder

    async with (
        harness_with(client, nats_url, tmp_path, reviewer_keys=key_folder(tmp_path)) as harness,
        harness.worker(),
    ):
        handle = await harness.start_pipeline(environment="prod", approval_policy={"reviewers": ["bob"]})
        view = await wait_for_gate(handle, "deploy")
        bound = gate_review(view, "bob")

        def sign(key: Ed25519PrivateKey) -> ReviewDecision:
            return signed(bound, handle.id, key, datetime.now(UTC))

        await handle.signal("review", sign(MALLORY))
        await wait_for(handle, lambda v: sum(v.refused_reviews.values()) == 1)
        await handle.execute_update("review", sign(BOB))
        await handle.result()
        await save(handle, "pipeline-signed")
