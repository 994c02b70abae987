"""The review audit trail on a real ``nats-server -js``: ``audit.append`` appends once per record whatever is
retried, and ``quantum audit verify`` names the changed, reordered and missing records of a chain."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from temporalio.testing import ActivityEnvironment

from events.audit import AuditChain, AuditRecorder, ReviewFields, canonical, digest, run_subject
from quantum.audit import check, read_records
from tests.cli.support import QUANTUM

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def review(n: int, **fields: Any) -> ReviewFields:
    values: dict[str, Any] = {
        "gate": "deploy",
        "reviewer": f"erin-{n}",
        "approved": True,
        "comment": f"looked at it ({n})",
        "accepted": n % 2 == 1,
        "reason": "" if n % 2 == 1 else "'ann' requested this run and cannot review it",
        "reviewed_at": WHEN,
    }
    return ReviewFields(**(values | fields))


def chain_of(run_id: str, count: int) -> list[dict[str, Any]]:
    """``count`` records of ``run_id``, each linked to the one before, as the activity writes them."""
    chain, records = AuditChain.start(run_id), []
    for n in range(1, count + 1):
        record = chain.next_input(review(n)).record()
        chain.index, chain.head = record["index"], record["hash"]
        records.append(record)
    return records


async def publish_raw(nats_url: str, run_id: str, bodies: list[bytes]) -> None:
    """Publish ``bodies`` on ``run_id``'s subject as they are: how a tampered stream is built for the tests."""
    nc = await nats.connect(nats_url)
    try:
        for body in bodies:
            await nc.jetstream().publish(run_subject(run_id), body, timeout=10)
    finally:
        await nc.close()


def verify(nats_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env.update(QUANTUM_NATS_URL=nats_url, QUANTUM_DATA_DIR=str(tmp_path / "data"), COLUMNS="400")
    return subprocess.run(
        [str(QUANTUM), "audit", "verify", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


async def test_a_record_appended_twice_with_one_key_is_one_record(nats_url: str) -> None:
    run_id = f"pipeline-{uuid.uuid4()}"
    recorder = AuditRecorder(nats_url)
    env = ActivityEnvironment()
    try:
        chain = AuditChain.start(run_id)
        first_input = chain.next_input(review(1))
        first = await env.run(recorder.append, first_input)
        again = await env.run(recorder.append, first_input)  # a retried activity, a replayed workflow
        assert not first.duplicate and again.duplicate
        assert (again.stream_sequence, again.hash, again.index) == (first.stream_sequence, first.hash, 1)
        # past the duplicate window (another message id): the run's last record is this one, so still once
        late = await env.run(recorder.append, first_input.model_copy(update={"key": "retried-much-later"}))
        assert late.duplicate and late.stream_sequence == first.stream_sequence

        chain.advance(first)
        second = await env.run(recorder.append, chain.next_input(review(2, approved=False, digest="ab" * 32)))
        assert not second.duplicate and second.index == 2
    finally:
        await recorder.close()

    nc = await nats.connect(nats_url)
    try:
        stored = await read_records(nc, run_id=run_id)
    finally:
        await nc.close()
    assert [m.sequence for m in stored] == [first.stream_sequence, second.stream_sequence]
    verdict = check(stored)
    assert verdict.intact, verdict.problems
    body = json.loads(stored[1].data)
    assert body["prev"] == first.hash and body["digest"] == "ab" * 32 and body["approved"] is False
    assert body["reviewed_at"] == "2026-01-02T03:04:05.000000+00:00"


async def test_verify_passes_an_intact_chain_and_names_a_changed_a_reordered_and_a_missing_record(
    nats_url: str, tmp_path: Path
) -> None:
    intact, changed, swapped, deleted = (f"pipeline-{name}-{uuid.uuid4()}" for name in ("ok", "ch", "sw", "del"))
    await publish_raw(nats_url, intact, [canonical(r) for r in chain_of(intact, 4)])

    records = chain_of(changed, 4)
    tampered = canonical(records[1]).replace(b'"reviewer":"erin-2"', b'"reviewer":"erin-3"')  # one byte flipped
    assert tampered != canonical(records[1])
    await publish_raw(nats_url, changed, [canonical(records[0]), tampered, *map(canonical, records[2:])])

    records = chain_of(swapped, 4)
    await publish_raw(nats_url, swapped, [canonical(records[i]) for i in (0, 2, 1, 3)])

    records = chain_of(deleted, 4)
    await publish_raw(nats_url, deleted, [canonical(records[i]) for i in (0, 1, 3)])

    ok = verify(nats_url, tmp_path, "--stream-only", "--pipeline", intact)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "4 records in 1 chains, all intact" in ok.stdout and intact in ok.stdout

    found = {}
    for run_id in (changed, swapped, deleted):
        result = verify(nats_url, tmp_path, "--stream-only", "--pipeline", run_id)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and run_id in result.stdout
        found[run_id] = [line for line in result.stdout.splitlines() if run_id in line]
        assert len(found[run_id]) == 1, result.stdout  # exactly one problem, on the right record
    assert "changed" in found[changed][0] and "record 2's content does not match its hash" in found[changed][0]
    assert "reordered" in found[swapped][0] and "record 3 stands before its predecessor, record 2" in found[swapped][0]
    assert "missing" in found[deleted][0] and "record 3 is missing" in found[deleted][0]

    everything = verify(
        nats_url, tmp_path, "--stream-only"
    )  # the whole stream: every broken run named, the intact one not
    assert everything.returncode == 1
    assert all(run_id in everything.stdout for run_id in (changed, swapped, deleted)), everything.stdout
    assert intact not in everything.stdout


async def test_verify_reads_hostile_records_as_data(nats_url: str, tmp_path: Path) -> None:
    run_id = f"pipeline-hostile-{uuid.uuid4()}"
    odd = chain_of(run_id, 1)[0] | {"run_id": run_id + "\x1b]0;owned\x07[red]x[/red]"}
    await publish_raw(
        nats_url,
        run_id,
        [
            b"[" * 5000,
            b"\xff\xfe not utf-8",
            b'{"v": 1, "run_id": 7}',
            json.dumps({"v": 1, "padding": "x" * 20_000}).encode(),
            canonical(odd),
        ],
    )
    result = verify(nats_url, tmp_path, "--stream-only", "--pipeline", run_id)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b]0;owned\\x07[red]x[/red]" in result.stdout
    assert result.stdout.count("unreadable") == 4 and "misfiled" in result.stdout


@pytest.mark.parametrize("name", ["erin", "ERIN\u202e", "\ud800"])
def test_records_hash_whatever_the_names(name: str) -> None:
    chain = AuditChain.start("pipeline-x")
    record = chain.next_input(review(1, reviewer=name, comment="c" * 5000)).record()
    assert len(record["comment"]) == 2000 and check([]).intact
    assert len(canonical(record)) < 16 * 1024


def test_signatures_tell_the_workers_records_from_anyone_elses() -> None:
    """A record the workers' key signed verifies; one signed with another key, one carrying a signature copied from
    another record, one unsigned, and an authenticated record whose reviewer's signature does not verify are named."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from events import signing
    from events.audit import key_id, public_bytes
    from events.models import ReviewDecision
    from quantum.audit import Keys, StoredRecord
    from workflows.review_rules import signed_message

    worker, other, erin = (Ed25519PrivateKey.generate() for _ in range(3))
    run_id, execution = f"pipeline-{uuid.uuid4()}", "run-1"
    decision = ReviewDecision(
        gate="deploy",
        reviewer="erin",
        approved=True,
        digest="ab" * 32,
        challenge="c" * 48,
        nonce="n" * 12,
        expires_at="2026-12-07T00:10:00+00:00",
    )
    decision = decision.model_copy(update={"signature": signing.sign(erin, signed_message(decision, run_id))})
    fields = review(
        1,
        reviewer="erin",
        comment="",
        accepted=True,
        authenticated=True,
        identity="ed25519:erin",
        digest=decision.digest,
        nonce=decision.nonce,
        challenge=decision.challenge,
        expires_at=decision.expires_at,
        signature=decision.signature,
    )
    chain = AuditChain.start(run_id, execution)
    first = chain.next_input(fields).record()
    chain.index, chain.head = 1, first["hash"]
    second = chain.next_input(review(2)).record()
    ours = AuditRecorder("nats://unused", signing_key=worker)
    theirs = AuditRecorder("nats://unused", signing_key=other)
    keys = Keys(audit={key_id(public_bytes(worker)): public_bytes(worker)}, reviewers={"erin": public_bytes(erin)})

    def stored(*records: dict[str, Any]) -> list[StoredRecord]:
        return [StoredRecord(n, run_subject(run_id), canonical(r)) for n, r in enumerate(records, 1)]

    good = [ours._signed(first), ours._signed(second)]
    assert check(stored(*good), keys).intact
    copied = {**second, "sig": good[0]["sig"], "key_id": good[0]["key_id"]}
    lied = {**first, "signature": signing.sign(erin, b"something else")}
    lied["hash"] = digest(lied)
    relinked = {**second, "prev": lied["hash"]}
    relinked["hash"] = digest(relinked)
    cases = {
        "names audit key": [good[0], theirs._signed(second)],
        "worker signature does not verify": [good[0], copied],
        "is not signed by a worker's audit key": [good[0], second],
        "reviewer signature does not verify": [ours._signed(lied), ours._signed(relinked)],
    }
    for detail, records in cases.items():
        verdict = check(stored(*records), keys)
        assert [p.detail for p in verdict.problems if detail in p.detail], (detail, verdict.problems)
        assert {p.kind for p in verdict.problems} <= {"forged", "unsigned"}, verdict.problems
    assert check(stored(good[0], second)).intact  # without keys, the signatures are not checked
