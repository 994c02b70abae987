"""The run's side of the audit trail in real workflow code, and ``quantum reviews pending`` against real runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import nats
import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from events.audit import (
    AUDIT_STREAM,
    REFUSED_SUBJECT_PREFIX,
    AuditChain,
    ReviewFields,
    canonical,
    digest,
    run_subject,
)
from events.models import ReviewDecision
from quantum.audit import Keys, check, read_records
from quantum.audit_keys import audit_verify_keys
from tests.cli.support import QUANTUM
from tests.conftest import nats_server
from tests.workflows.conftest import Harness, status, wait_for, wait_for_gate
from workflows.audit_log import AuditLog
from workflows.models import AuditEntry


@workflow.defn(name="AuditTrailProbe", sandboxed=False)
class AuditTrailProbe:
    """Appends three reviews through :class:`AuditLog`, two of them at once, as review handlers would."""

    @workflow.run
    async def run(self, reviewers: list[str]) -> AuditChain:
        log = AuditLog(workflow.info().workflow_id)
        first, *rest = reviewers
        assert await log.append(AuditEntry(gate="deploy", reviewer=first, approved=True, accepted=True)) is None
        entries = [AuditEntry(gate="deploy", reviewer=r, approved=False, accepted=False, reason="no") for r in rest]
        # started together, as concurrent review handlers would: the log appends them one at a time, in order
        tasks = [asyncio.ensure_future(log.append(entry.model_copy(update={"digest": "cd" * 32}))) for entry in entries]
        await log.drain()
        assert all(t.done() and t.result() is None for t in tasks)
        return log.chain


async def test_a_run_appends_its_reviews_as_one_chain(client: Client, nats_url: str) -> None:
    from events.audit import AuditRecorder

    recorder = AuditRecorder(nats_url)
    task_queue = f"audit-{uuid.uuid4()}"
    try:
        async with Worker(client, task_queue=task_queue, workflows=[AuditTrailProbe], activities=[recorder.append]):
            handle = await client.start_workflow(
                AuditTrailProbe.run,
                ["erin", "bob", "carol"],
                id=f"pipeline-probe-{uuid.uuid4()}",
                task_queue=task_queue,
            )
            chain = await handle.result()
    finally:
        await recorder.close()
    assert chain.index == 3
    nc = await nats.connect(nats_url)
    try:
        stored = await read_records(nc, run_id=handle.id)
    finally:
        await nc.close()
    verdict = check(stored)
    assert verdict.intact, verdict.problems
    assert [r.records for r in verdict.runs] == [3] and verdict.runs[0].head == chain.head


def cli_env(temporal_address: str, nats_url: str, data: Path) -> dict[str, str]:
    """The environment of a ``quantum`` command against the test's servers and data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env.update(
        QUANTUM_TEMPORAL_ADDRESS=temporal_address, QUANTUM_NATS_URL=nats_url, QUANTUM_DATA_DIR=str(data), COLUMNS="400"
    )
    return env


def quantum(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(QUANTUM), *args], env=env, capture_output=True, text=True, timeout=120)


def pending(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return quantum(env, "reviews", "pending")


@pytest.mark.timeout(600)
async def test_reviews_pending_lists_a_run_at_its_gate_and_not_one_that_ended(
    harness: Harness, temporal_address: str
) -> None:
    env = cli_env(temporal_address, harness.settings.nats_url, harness.settings.data_path)
    async with harness.worker():
        waiting = await harness.start_pipeline(
            environment="prod", approval_policy={"timeout_seconds": {"deploy": 3600}, "reviewers": ["erin"]}
        )
        finished = await harness.start(
            "CodeGenerationWorkflow",
            {"project": "slugs", "prompt": "a slugify helper for titles", "requested_by": "alice"},
            prefix="codegen",
        )
        await finished.result()
        await wait_for_gate(waiting, "deploy")

        listed = await asyncio.to_thread(pending, env)
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if waiting.id in line)
        assert "deploy" in row and "0/1" in row and "environment prod" in row
        cells = [cell.strip() for cell in row.split("│")]
        waited, left = seconds_of(cells[4]), seconds_of(cells[5])
        assert 3590 <= waited + left <= 3600, cells  # an hour's timeout, counted from when the gate opened
        assert "(run start)" not in row  # since when the gate opened, from the run's history
        assert finished.id not in listed.stdout

        await waiting.signal("review", ReviewDecision(gate="deploy", reviewer="mallory", approved=True))
        view = await wait_for(waiting, lambda v: len(v.audit) == 1)
        shown = await asyncio.to_thread(quantum, env, "pipeline", "show", waiting.id)
        assert shown.returncode == 0, shown.stderr
        for what in ("for the reviewer", "line coverage %", "mutation score", "infra plan", "new since the last"):
            assert what in shown.stdout, shown.stdout
        assert str(view.outputs["release"]) in shown.stdout and str(view.outputs["coverage"]) in shown.stdout
        assert "gate challenges" in shown.stdout and view.gate_challenges["deploy"] in shown.stdout
        assert "mallory" in shown.stdout and "not a reviewer allowed by the approval policy" in shown.stdout
        quiet = await asyncio.to_thread(quantum, env, "pipeline", "show", waiting.id, "--no-reviews")
        assert quiet.returncode == 0 and "mallory" not in quiet.stdout

        await waiting.signal("review", ReviewDecision(gate="deploy", reviewer="erin", approved=False))
        with pytest.raises(WorkflowFailureError):
            await waiting.result()
        assert (await status(waiting)).status == "rejected"
        after = await asyncio.to_thread(pending, env)
    assert after.returncode == 0, after.stderr
    assert waiting.id not in after.stdout


async def test_a_pipelines_reviews_go_to_the_audit_stream_as_one_intact_chain(
    harness: Harness, nats_url: str, temporal_address: str, tmp_path: Path
) -> None:
    """Through the real gate: two approvals appended once each, in order, to the chain of the run's execution, each
    signed by the worker's audit key; the refused review (the requester) is not in the chain but in the summary
    beside it. The run keeps its chain's head, so removing the last record (which breaks no link) is still found."""
    env = cli_env(temporal_address, nats_url, harness.settings.data_path)
    async with harness.worker():
        policy = {"required_approvals": {"deploy": 2}}
        handle = await harness.start_pipeline(environment="prod", approval_policy=policy)
        await wait_for_gate(handle, "deploy")
        for reviewer in ("alice", "bob", "carol"):
            await handle.signal("review", ReviewDecision(gate="deploy", reviewer=reviewer, approved=True))
        await handle.result()
        view = await status(handle)
        execution = (await handle.describe()).run_id
        nc = await nats.connect(nats_url)
        try:
            stored = await read_records(nc, run_id=handle.id)
            keys = Keys(audit=audit_verify_keys(harness.settings))
            verdict = check(stored, keys)
            assert verdict.intact and verdict.records == 2, verdict.problems
            assert [(c.execution, c.records) for c in verdict.runs] == [(execution, 2)]
            assert (view.audit_records, view.audit_head) == (2, verdict.runs[0].head)
            assert all(json.loads(r.data)["key_id"] in keys.audit for r in stored)
            summary = await nc.jetstream().get_last_msg(AUDIT_STREAM, run_subject(handle.id, REFUSED_SUBJECT_PREFIX))
            refusals = json.loads(summary.data)
            assert (refusals["gate"], refusals["counts"], refusals["execution"]) == (
                "deploy",
                {"requester": 1},
                execution,
            )
            assert [r["reviewer"] for r in refusals["recent"]] == ["alice"] and refusals["sig"]
            intact = await asyncio.to_thread(quantum, env, "audit", "verify", "--pipeline", handle.id)
            assert intact.returncode == 0, intact.stdout + intact.stderr
            assert "all intact" in intact.stdout

        finally:
            await nc.close()
        # QUANTUM_AUDIT refuses deletes and purges; whoever can rewrite it can still drop the last record: the run's
        # records but the last, copied into another server's audit stream
        with contextlib.ExitStack() as stack:
            rewritten = await asyncio.to_thread(stack.enter_context, nats_server(tmp_path / "rewritten"))
            other = await nats.connect(rewritten)
            try:
                for record in stored[:-1]:
                    await other.jetstream().publish(record.subject, record.data, timeout=10)
                assert check(await read_records(other, run_id=handle.id)).intact  # the stream alone cannot tell
            finally:
                await other.close()
            cut = await asyncio.to_thread(
                quantum, env | {"QUANTUM_NATS_URL": rewritten}, "audit", "verify", "--pipeline", handle.id
            )
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "truncated" in cut.stdout and "record 2 missing from the end" in cut.stdout
    assert [(e.reviewer, e.accepted) for e in view.audit] == [("alice", False), ("bob", True), ("carol", True)]
    assert view.refused_reviews == {"requester": 1}
    assert not any("audit stream" in w for w in view.warnings)


def seconds_of(shown: str) -> int:
    """``1h 00m``, ``58m 47s``, ``12s`` as seconds (to the minute for hours)."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(int(part[:-1]) * units[part[-1]] for part in shown.split())


async def test_forged_records_and_chains_without_a_run_are_flagged(
    harness: Harness, nats_url: str, temporal_address: str
) -> None:
    """A correctly hashed record appended after a run's last one with a plain NATS client (saying ``frank``
    approved, authenticated) is flagged twice: no worker signed it, and it lies past the run's own head. A chain
    for a run that never existed is an orphan, and ``--pipeline`` naming no run and no records fails."""
    env = cli_env(temporal_address, nats_url, harness.settings.data_path)
    async with harness.worker():
        handle = await harness.start_pipeline(environment="prod")
        await wait_for_gate(handle, "deploy")
        await handle.signal("review", ReviewDecision(gate="deploy", reviewer="bob", approved=True))
        await handle.result()
    nc = await nats.connect(nats_url)
    try:
        (last,) = await read_records(nc, run_id=handle.id)
        body = json.loads(last.data)
        forged = {k: v for k, v in body.items() if k not in ("hash", "sig", "key_id")}
        forged.update(index=2, prev=body["hash"], reviewer="frank", authenticated=True, identity="ed25519:frank")
        forged["hash"] = digest(forged)
        await nc.jetstream().publish(run_subject(handle.id), canonical(forged), timeout=10)
        ghost = f"pipeline-ghost-{uuid.uuid4()}"
        chain = AuditChain.start(ghost)
        record = chain.next_input(ReviewFields.model_validate({**body, "reviewed_at": body["reviewed_at"]})).record()
        await nc.jetstream().publish(run_subject(ghost), canonical(record), timeout=10)
    finally:
        await nc.close()

    one = await asyncio.to_thread(quantum, env, "audit", "verify", "--pipeline", handle.id)
    assert one.returncode == 1, one.stdout + one.stderr
    assert "unsigned" in one.stdout and "record 2 is not signed by a worker's audit key" in one.stdout
    assert "beyond_head" in one.stdout and "records 2 to 2 lie past the run's head" in one.stdout
    everything = await asyncio.to_thread(quantum, env, "audit", "verify")
    assert everything.returncode == 1
    assert "orphan" in everything.stdout and ghost in everything.stdout
    nobody = await asyncio.to_thread(quantum, env, "audit", "verify", "--pipeline", f"pipeline-nope-{uuid.uuid4()}")
    assert nobody.returncode == 1 and "no run" in nobody.stderr and "check the id" in nobody.stderr
