"""Checking the review audit trail: read ``QUANTUM_AUDIT``, recompute every record's hash and every chain link.

Everything read from the stream is hostile data: a message over the record bound is not parsed, JSON is parsed
with a depth limit, every field is type-checked before use, and the problems name what they found in bounded text.

What is reported, per run:

- ``changed``: a record's content does not match its own hash (a byte was altered after it was appended);
- ``reordered``: a record stands in the stream before the record it links to;
- ``missing``: a record links to a hash no record of the run has, or its index is not one more than the index of
  the record it links to (a record was removed, or never appended);
- ``forked``: two records link to the same predecessor (one was injected, or appended twice);
- ``unreadable`` / ``misfiled``: a message that is not a record, or a record on another run's subject.

A record removed from the *end* of a chain leaves no trace in the stream; the run's own state in Temporal (its
``audit_records`` and ``audit_head``) is the other copy, and :func:`compare_head` finds it missing (``truncated``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from events.audit import (
    AUDIT_STREAM,
    AUDIT_SUBJECTS,
    MAX_RECORD_BYTES,
    RECORD_VERSION,
    digest,
    genesis,
    is_hash,
    run_subject,
)
from events.envelope import MalformedEvent, load_json

_TEXT_FIELDS = ("gate", "reviewer", "comment", "reason", "reviewed_at")
_BOOL_FIELDS = ("approved", "accepted", "authenticated")


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
    if body.get("v") != RECORD_VERSION:
        return None, f"not a record of version {RECORD_VERSION}"
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


def check(messages: list[StoredRecord]) -> Verdict:
    """Check the records in ``messages`` (in stream order): each hash, each link, each run's indexes."""
    verdict = Verdict(records=len(messages))
    runs: dict[str, list[_Record]] = defaultdict(list)
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
        runs[run_id].append(_Record(message.sequence, body["index"], body["prev"], body["hash"], ok))
    for run_id, records in runs.items():
        verdict.problems.extend(_links(run_id, records))
        last = records[-1]
        verdict.runs.append(
            RunSummary(
                run_id=run_id,
                records=len(records),
                first_sequence=records[0].sequence,
                last_sequence=last.sequence,
                last_index=max(r.index for r in records),
                head=last.hash,
            )
        )
    verdict.problems.sort(key=lambda p: (p.run_id, p.sequence))
    return verdict


def compare_head(verdict: Verdict, run_id: str, *, records: int, head: str) -> None:
    """Add to ``verdict`` what the run's own head (from its status in Temporal) says is missing from its chain:
    records removed from the end leave no broken link, but the run knows how many it appended and the last hash."""
    if records <= 0:
        return
    chain = next((c for c in verdict.runs if c.run_id == run_id), None)
    last_index, last_head, sequence = (chain.last_index, chain.head, chain.last_sequence) if chain else (0, "", 0)
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


def _links(run_id: str, records: list[_Record]) -> list[Problem]:
    """The link problems of one run's records, given in stream order."""
    problems: list[Problem] = []
    start = genesis(run_id)
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
    subject = run_subject(run_id) if run_id is not None else AUDIT_SUBJECTS
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
