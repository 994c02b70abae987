"""The stock ``temporal`` CLI drives a run: signal ``review`` with plain JSON, query ``status`` for JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import Harness, wait_for_gate

pytestmark = pytest.mark.workflow

TEMPORAL = Path(sys.executable).parent / "temporal"


async def temporal_cli(address: str, *args: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        str(TEMPORAL),
        *args,
        "--address",
        address,
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out) if out.strip() else None


async def test_temporal_cli_signals_review_and_queries_status(harness: Harness, temporal_address: str) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod")
        await wait_for_gate(handle, "deploy")

        answer = await temporal_cli(
            temporal_address, "workflow", "query", "--workflow-id", handle.id, "--type", "status"
        )
        (view,) = answer["queryResult"]
        assert view["pipeline_id"] == handle.id
        assert view["status"] == "awaiting_review"
        assert view["pending_gate"] == "deploy"
        assert view["stage"] == "deploy_application"
        assert view["stages"]["execute_tests"] == "succeeded"
        # the payload holds empty lists; the temporal CLI prints an empty JSON array as null
        assert view["compensations"] in ([], None)
        assert view["audit"] in ([], None)

        review = {"gate": "deploy", "reviewer": "bob", "approved": True, "comment": "from the temporal CLI"}
        await temporal_cli(
            temporal_address,
            "workflow",
            "signal",
            "--workflow-id",
            handle.id,
            "--name",
            "review",
            "--input",
            json.dumps(review),
        )
        result = await handle.result()
        assert result.status == "succeeded"

        answer = await temporal_cli(
            temporal_address, "workflow", "query", "--workflow-id", handle.id, "--type", "status"
        )
        (view,) = answer["queryResult"]
        assert view["status"] == "succeeded"
        assert view["audit"] == [
            {
                "gate": "deploy",
                "reviewer": "bob",
                "approved": True,
                "comment": "from the temporal CLI",
                "accepted": True,
                "reason": "",
                "digest": "",  # the stock CLI names no digest: taken as the gate's, with no keys configured
                "nonce": "",
                "identity": "unauthenticated",
            }
        ]
