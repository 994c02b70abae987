"""Checking the review audit trail: read ``QUANTUM_AUDIT``, recompute every record's hash and every chain link.

Everything read from the stream is hostile data: a message over the record bound is not parsed, JSON is parsed
with a depth limit, every field is type-checked before use, and the problems name what they found in bounded text.

What is reported, per run:

- ``changed``: a record's content does not match its own hash (a byte was altered after it was appended);
- ``reordered``: a record stands in the stream before the record it links to;
- ``missing``: a record links to a hash no record of the run has, or its index is not one more than the index of
  the record it links to (a record was removed, or never appended);
- ``forked``: two records link to the same predecessor (one was injected, or appended twice);
- ``unreadable`` / ``misfiled``: a message that is not a record, or a record on another run's subject;
- ``unsigned`` / ``forged``: with the workers' audit keys known, a record no worker signed, or whose signature does
  not verify (a publisher on the bus wrote it); with the reviewers' keys known, an ``authenticated`` record whose
  reviewer's signature, carried in the record, does not verify;
- ``beyond_head``: records past the head the run itself keeps (appended after the run's last one, by someone else);
- ``orphan``: a chain with no run behind it in Temporal (never existed, or past the namespace's retention).

A chain is one execution's: runs since gate challenges name their Temporal run id in each record (``execution``),
so a run started again under the same workflow id has its own chain. A record removed from the *end* of a chain
leaves no trace in the stream; the run's own state in Temporal (its ``audit_records`` and ``audit_head``) is the
other copy, and :func:`compare_head` finds it missing (``truncated``) or finds records past it (``beyond_head``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from events import signing
from events.audit import (
    AUDIT_RECORDS,
    AUDIT_STREAM,
    EXECUTION_RECORD_VERSION,
    MAX_RECORD_BYTES,
    RECORD_VERSION,
    digest,
    genesis,
    is_hash,
    run_subject,
    signed_bytes,
)
from events.envelope import MalformedEvent, load_json
from events.models import normalise_identity

_TEXT_FIELDS = ("gate", "reviewer", "comment", "reason", "reviewed_at")
_BOOL_FIELDS = ("approved", "accepted", "authenticated")
_EXECUTION_FIELDS = ("execution", "challenge", "expires_at", "signature")


@dataclass(frozen=True)
class Keys:
    """What ``verify`` checks signatures with: the workers' audit keys (by key id) and the reviewers' keys (by
    normalised name). Either may be empty: then those signatures are not checked, and the verdict says so."""

    audit: Mapping[str, bytes] = field(default_factory=dict)
    reviewers: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredRecord:
    """One message of ``QUANTUM_AUDIT``: its stream sequence, subject and bytes."""

    sequence: int
    subject: str
    data: bytes


@dataclass(frozen=True)
class Problem:
    run_id: str
    sequence: int
    kind: str
    detail: str


@dataclass
class _Record:
    sequence: int
    index: int
    prev: str
    hash: str
    body_ok: bool


@dataclass
class RunSummary:
    run_id: str
    execution: str = ""
    records: int = 0
    first_sequence: int = 0
    last_sequence: int = 0
    last_index: int = 0
    head: str = ""


@dataclass
class Verdict:
    runs: list[RunSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    records: int = 0

    @property
    def intact(self) -> bool:
        return not self.problems


def _short(value: str) -> str:
    return value[:12] + "…"


def parse_record(message: StoredRecord) -> tuple[dict[str, Any] | None, str]:
    """The record in ``message``, checked field by field, or None and what is wrong with it."""
    if len(message.data) > MAX_RECORD_BYTES:
        return None, f"{len(message.data)} bytes, over the {MAX_RECORD_BYTES}-byte bound of a record"
    try:
        body = load_json(message.data, max_depth=4)
    except MalformedEvent as err:
        return None, f"not a record: {err.reason[:200]}"
    if not isinstance(body, dict):
        return None, f"not a record: a JSON {type(body).__name__}, not an object"
    if body.get("v") not in (RECORD_VERSION, EXECUTION_RECORD_VERSION):
        return None, f"not a record of version {RECORD_VERSION} or {EXECUTION_RECORD_VERSION}"
    if body["v"] == EXECUTION_RECORD_VERSION:
        for name in _EXECUTION_FIELDS:
            if not isinstance(body.get(name), str):
                return None, f"the record's {name} is not text"
    run_id, index = body.get("run_id"), body.get("index")
    if not isinstance(run_id, str) or not run_id:
        return None, "the record names no run"
    if not isinstance(index, int) or isinstance(index, bool) or index < 1:
        return None, "the record has no index"
    for name in ("prev", "hash"):
        if not is_hash(body.get(name)):
            return None, f"the record's {name} is not a sha256 in hex"
    for name in _TEXT_FIELDS:
        if not isinstance(body.get(name), str):
            return None, f"the record's {name} is not text"
    for name in _BOOL_FIELDS:
        if not isinstance(body.get(name), bool):
            return None, f"the record's {name} is not true or false"
    return body, ""


def _worker_signature_problem(body: dict[str, Any], keys: Mapping[str, bytes]) -> tuple[str, str] | None:
    """Whether a worker's audit key signed the record: None, or the problem's kind and detail."""
    sig, key = body.get("sig"), body.get("key_id")
    if not isinstance(sig, str) or not isinstance(key, str):
        return (
            "unsigned",
            (
                f"record {body['index']} is not signed by a worker's audit key: anyone allowed to publish on its "
                "subject could have written it"
            ),
        )
    public = keys.get(key)
    if public is None:
        return "forged", f"record {body['index']} names audit key {key[:16]!r}, which is not one of the workers' keys"
    if not signing.verify(public, signed_bytes(body["hash"]), sig, native=True):
        return "forged", f"record {body['index']}'s worker signature does not verify with audit key {key[:16]!r}"
    return None


def _reviewer_signature_problem(body: dict[str, Any], keys: Mapping[str, bytes]) -> str | None:
    """Whether an ``authenticated`` record of a run with challenges carries its reviewer's valid signature."""
    if not body.get("authenticated") or body.get("v") != EXECUTION_RECORD_VERSION:
        return None
    public = keys.get(normalise_identity(body["reviewer"]))
    if public is None:
        return f"record {body['index']} says {body['reviewer'][:40]!r} signed it, who has no key here"
    message = signing.canonical(
        run_id=body["run_id"],
        gate=body["gate"],
        digest=body.get("digest"),
        reviewer=body["reviewer"],
        approved=body["approved"],
        comment=body["comment"],
        nonce=body.get("nonce") or None,
        expires_at=body["expires_at"] or None,
        challenge=body["challenge"] or None,
    )
    if not signing.verify(public, message, body["signature"], native=True):
        return f"record {body['index']}'s reviewer signature does not verify with the key of {body['reviewer'][:40]!r}"
    return None


def _signature_problems(body: dict[str, Any], keys: Keys) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if keys.audit:
        problem = _worker_signature_problem(body, keys.audit)
        if problem:
            found.append(problem)
    if keys.reviewers:
        detail = _reviewer_signature_problem(body, keys.reviewers)
        if detail:
            found.append(("forged", detail))
    return found


def chain_key(body: dict[str, Any]) -> tuple[str, str]:
    return str(body["run_id"]), str(body.get("execution") or "")


def check(messages: list[StoredRecord], keys: Keys | None = None) -> Verdict:
    """Check the records in ``messages`` (in stream order): each hash, each link, each chain's indexes, and the
    signatures ``keys`` can check."""
    keys = keys or Keys()
    verdict = Verdict(records=len(messages))
    runs: dict[tuple[str, str], list[_Record]] = defaultdict(list)
    for message in messages:
        body, problem = parse_record(message)
        if body is None:
            verdict.problems.append(Problem(f"({message.subject[-32:]})", message.sequence, "unreadable", problem))
            continue
        run_id = str(body["run_id"])
        if message.subject != run_subject(run_id):
            verdict.problems.append(
                Problem(run_id, message.sequence, "misfiled", "the record is on another run's subject")
            )
        try:
            ok = digest(body) == body["hash"]
        except (TypeError, ValueError):  # a value canonical JSON cannot write
            ok = False
        if not ok:
            verdict.problems.append(
                Problem(
                    run_id,
                    message.sequence,
                    "changed",
                    f"record {body['index']}'s content does not match its hash {_short(body['hash'])}",
                )
            )
        for kind, detail in _signature_problems(body, keys):
            verdict.problems.append(Problem(run_id, message.sequence, kind, detail))
        runs[chain_key(body)].append(_Record(message.sequence, body["index"], body["prev"], body["hash"], ok))
    for (run_id, execution), records in runs.items():
        verdict.problems.extend(_links(run_id, execution, records))
        last = records[-1]
        verdict.runs.append(
            RunSummary(
                run_id=run_id,
                execution=execution,
                records=len(records),
                first_sequence=records[0].sequence,
                last_sequence=last.sequence,
                last_index=max(r.index for r in records),
                head=last.hash,
            )
        )
    verdict.problems.sort(key=lambda p: (p.run_id, p.sequence))
    return verdict


def compare_head(verdict: Verdict, run_id: str, *, records: int, head: str, execution: str = "") -> None:
    """Add to ``verdict`` what the run's own head (from its status in Temporal) says of its chain: records removed
    from the end leave no broken link, but the run knows how many it appended and the last hash; records past that
    were appended by someone else."""
    chain = next((c for c in verdict.runs if (c.run_id, c.execution) == (run_id, execution)), None)
    last_index, last_head, sequence = (chain.last_index, chain.head, chain.last_sequence) if chain else (0, "", 0)
    if last_index > records:
        verdict.problems.append(
            Problem(
                run_id,
                sequence,
                "beyond_head",
                f"the run appended {records} records, the stream holds {last_index}: records {records + 1} to "
                f"{last_index} lie past the run's head, written by someone else",
            )
        )
        return
    if records <= 0:
        return
    if last_index < records:
        gone = f"record {records}" if last_index + 1 == records else f"records {last_index + 1} to {records}"
        verdict.problems.append(
            Problem(
                run_id,
                sequence,
                "truncated",
                f"the run appended {records} records, the stream holds {last_index}: {gone} missing from the end",
            )
        )
    elif last_index == records and last_head != head:
        verdict.problems.append(
            Problem(
                run_id,
                sequence,
                "changed",
                f"the stream's last record {_short(last_head)} is not the one the run appended ({_short(head)})",
            )
        )


def _links(run_id: str, execution: str, records: list[_Record]) -> list[Problem]:
    """The link problems of one chain's records, given in stream order."""
    problems: list[Problem] = []
    start = genesis(run_id, execution)
    by_hash: dict[str, _Record] = {}
    for record in records:
        first = by_hash.setdefault(record.hash, record)
        if first is not record:
            copy = f"a second copy of record {record.index} (seq {first.sequence})"
            problems.append(Problem(run_id, record.sequence, "forked", copy))
    by_index: dict[int, _Record] = {}
    for record in records:
        by_index.setdefault(record.index, record)
    children: dict[str, list[_Record]] = defaultdict(list)
    for record in records:
        if by_hash[record.hash] is record:
            children[record.prev].append(record)
    for siblings in children.values():
        for extra in siblings[1:]:
            problems.append(
                Problem(
                    run_id,
                    extra.sequence,
                    "forked",
                    f"record {extra.index} links to the same predecessor as seq {siblings[0].sequence}",
                )
            )
    for record in records:
        if by_hash[record.hash] is not record:
            continue
        if record.prev == start:
            if record.index != 1:
                problems.append(
                    Problem(
                        run_id,
                        record.sequence,
                        "missing",
                        f"record {record.index} links to the start of the chain: records 1 to {record.index - 1} "
                        "are not in the stream",
                    )
                )
            continue
        before = by_hash.get(record.prev)
        if before is None:
            problems.append(Problem(run_id, record.sequence, "missing", _missing(record, by_index)))
            continue
        if before.index + 1 != record.index:
            problems.append(
                Problem(
                    run_id,
                    record.sequence,
                    "missing",
                    f"record {record.index} follows record {before.index} (seq {before.sequence}): the index skips",
                )
            )
        if before.sequence > record.sequence:
            problems.append(
                Problem(
                    run_id,
                    record.sequence,
                    "reordered",
                    f"record {record.index} stands before its predecessor, record {before.index} "
                    f"(seq {before.sequence})",
                )
            )
    return problems


def _missing(record: _Record, by_index: dict[int, _Record]) -> str:
    said = f"record {record.index} links to {_short(record.prev)}, which no record of the run has"
    other = by_index.get(record.index - 1)
    if other is not None and other.body_ok:
        return f"{said}: record {other.index} (seq {other.sequence}) was replaced (changed and hashed again)"
    if other is not None:
        return f"{said}: record {other.index} (seq {other.sequence}) was changed"
    return f"{said}: record {record.index - 1} is missing"


async def read_records(nc: NATS, *, run_id: str | None = None, after: int = 0, limit: int = 0) -> list[StoredRecord]:
    """The messages of ``QUANTUM_AUDIT`` (only ``run_id``'s when given), one at a time, oldest first.

    ``limit`` 0 reads to the end; each message is at most the stream's ``max_msg_size``.
    """
    js = nc.jetstream()
    subject = run_subject(run_id) if run_id is not None else AUDIT_RECORDS
    found: list[StoredRecord] = []
    next_sequence = after + 1
    while not limit or len(found) < limit:
        try:
            msg = await js.get_msg(AUDIT_STREAM, seq=max(1, next_sequence), subject=subject, next=True)
        except NotFoundError:
            break
        sequence = msg.seq or next_sequence
        next_sequence = sequence + 1
        found.append(StoredRecord(sequence=sequence, subject=msg.subject or "", data=msg.data or b""))
    return found
