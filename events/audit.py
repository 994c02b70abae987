"""The review audit trail on the bus: every review a run receives, appended to ``QUANTUM_AUDIT`` as a hash chain.

One chain per run. Each record holds ``prev``, the hash of the run's previous record (the first one holds the run's
*genesis* hash, derived from the run id, so no run's chain can be spliced onto another's), its ``index`` in the run
(1, 2, ...) and its own ``hash``: the sha256 of its canonical bytes (:func:`canonical` of every field but
``hash``). The stream sequence orders all records of all runs (the global sequence).

Per run rather than one global chain: the workflow is the only writer of its run's chain and keeps the chain's head
(index and last hash) in its own state, so the activity never has to read a shared head under concurrency from
other runs, and a run's head in Temporal is a second copy against which the stream can be checked.

Records are published on ``quantum.audit.records.<digest of the run id>``: one subject per run, so that a run's
records are read (and its last record found) without reading the others.

Appending is the ``audit.append`` activity (:class:`AuditRecorder`): workflow code does no I/O. It is idempotent
twice over: the JetStream ``Nats-Msg-Id`` is derived from the run id and the caller's idempotency key (a retry
within the duplicate window is dropped by the server), and before publishing the activity reads the run's last
record: when that record *is* this one (same hash), it was already appended (a retry after the window).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import APIError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from temporalio import activity
from temporalio.exceptions import ApplicationError

from events.connection import LazyConnection
from events.envelope import MalformedEvent, load_json

AUDIT_STREAM = "QUANTUM_AUDIT"
AUDIT_SUBJECT_PREFIX = "quantum.audit.records."
AUDIT_SUBJECTS = "quantum.audit.>"
AUDIT_RECORDS = AUDIT_SUBJECT_PREFIX + "*"
RECORD_VERSION = 1
MAX_RECORD_BYTES = 16 * 1024
"""A record is at most this large on the wire (the stream's ``max_msg_size``); the fields are clipped to fit."""
MAX_RUN_ID_CHARS = 1000
GENESIS_DOMAIN = "quantum-audit-genesis"
_HASH = re.compile(r"^[0-9a-f]{64}$")

FIELD_LIMITS = {
    "gate": 40,
    "reviewer": 120,
    "comment": 2000,
    "reason": 1000,
    "digest": 200,
    "identity": 200,
    "nonce": 200,
}


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    note = f"… [{len(text) - limit} more characters]"
    return text[: max(0, limit - len(note))] + note


def canonical(fields: dict[str, Any]) -> bytes:
    """The canonical bytes of a record: JSON, keys sorted, no spaces, every non-ASCII character escaped (so lone
    surrogates in a hostile name still encode, and the bytes do not depend on the platform)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def digest(fields: dict[str, Any]) -> str:
    """The hash of a record: the sha256 of the canonical bytes of every field but ``hash``."""
    return hashlib.sha256(canonical({k: v for k, v in fields.items() if k != "hash"})).hexdigest()


def _id_bytes(run_id: str) -> bytes:
    return run_id.encode("utf-8", errors="surrogatepass")


def genesis(run_id: str) -> str:
    """What the first record of ``run_id`` links to."""
    return hashlib.sha256(f"{GENESIS_DOMAIN}\x00".encode() + _id_bytes(run_id)).hexdigest()


def run_subject(run_id: str) -> str:
    """The subject of ``run_id``'s records."""
    return AUDIT_SUBJECT_PREFIX + hashlib.sha256(_id_bytes(run_id)).hexdigest()[:32]


def message_id(run_id: str, key: str) -> str:
    """The ``Nats-Msg-Id`` of the record of ``run_id`` appended under idempotency ``key``."""
    return "audit-" + hashlib.sha256(_id_bytes(run_id) + b"\x00" + _id_bytes(key)).hexdigest()[:48]


def utc_text(when: datetime) -> str:
    """A time as the records write it: UTC, microseconds, ``+00:00`` (a naive time is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds")


class ReviewFields(BaseModel):
    """What a record says about one review: accepted (and counted) or refused with the reason.

    Every text is clipped to its bound on the way in, so no review can make a record too large to append.
    """

    model_config = ConfigDict(extra="ignore")

    gate: str
    reviewer: str
    approved: bool = Field(description="The decision: approve (true) or reject (false).")
    comment: str = ""
    accepted: bool
    reason: str = Field(default="", description="Why the review was refused; empty when accepted.")
    digest: str | None = Field(default=None, description="The release digest the reviewer decided on, if any.")
    authenticated: bool = Field(default=False, description="Whether the reviewer's identity was verified.")
    identity: str = Field(default="", description="How the reviewer was known, e.g. 'ed25519:<key name>'.")
    nonce: str = Field(default="", description="The nonce of a signed review (empty: none).")
    reviewed_at: datetime = Field(description="When the run took the review (workflow time).")

    @field_validator("gate", "reviewer", "comment", "reason", "digest", "identity", "nonce", mode="before")
    @classmethod
    def _bounded(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            return _clip(value, FIELD_LIMITS[info.field_name])
        return value


class AppendAuditInput(BaseModel):
    """One record to append to a run's chain, with the chain's head as the workflow knows it."""

    model_config = ConfigDict(extra="ignore")

    run_id: str = Field(min_length=1, max_length=MAX_RUN_ID_CHARS)
    index: int = Field(ge=1, description="The record's place in the run's chain: 1 for the first.")
    prev: str = Field(pattern=r"^[0-9a-f]{64}$", description="The hash of the run's previous record (or genesis).")
    key: str = Field(min_length=1, max_length=200, description="Idempotency key, unique within the run.")
    review: ReviewFields

    def record(self) -> dict[str, Any]:
        """The record this input appends, with its hash."""
        review = self.review
        fields: dict[str, Any] = {
            "v": RECORD_VERSION,
            "run_id": self.run_id,
            "index": self.index,
            "prev": self.prev,
            "gate": review.gate,
            "reviewer": review.reviewer,
            "approved": review.approved,
            "comment": review.comment,
            "accepted": review.accepted,
            "reason": review.reason,
            "digest": review.digest,
            "authenticated": review.authenticated,
            "identity": review.identity,
            "nonce": review.nonce,
            "reviewed_at": utc_text(review.reviewed_at),
        }
        fields["hash"] = digest(fields)
        return fields


class AppendedRecord(BaseModel):
    """Where a record is: its hash, its index in the run, its stream sequence, and whether it was already there."""

    run_id: str
    index: int
    hash: str
    stream_sequence: int
    duplicate: bool


class AuditChain(BaseModel):
    """The head of a run's chain, as the workflow keeps it: the last index and the last record's hash.

    Plain data, no I/O: safe in workflow code. ``next_input`` builds the activity's input for the next record,
    ``advance`` moves the head once the activity says where the record is.
    """

    run_id: str
    index: int = 0
    head: str = ""

    @classmethod
    def start(cls, run_id: str) -> AuditChain:
        return cls(run_id=run_id, index=0, head=genesis(run_id))

    def next_input(self, review: ReviewFields) -> AppendAuditInput:
        index = self.index + 1
        return AppendAuditInput(run_id=self.run_id, index=index, prev=self.head, key=f"review.{index}", review=review)

    def advance(self, appended: AppendedRecord) -> None:
        self.index, self.head = appended.index, appended.hash


class AuditRecorder:
    """Appends review records to ``QUANTUM_AUDIT`` over one NATS connection, opened on first use."""

    def __init__(self, nats_url: str, *, credentials: str | None = None) -> None:
        self.nats_url = nats_url
        self._connection = LazyConnection(nats_url, credentials=credentials)

    @activity.defn(name="audit.append")
    async def append(self, inp: AppendAuditInput) -> AppendedRecord:
        record = inp.record()
        raw = canonical(record)
        subject = run_subject(inp.run_id)
        headers = {"Nats-Msg-Id": message_id(inp.run_id, inp.key)}
        if len(raw) > MAX_RECORD_BYTES:
            raise ApplicationError(
                f"the audit record is {len(raw)} bytes, over the {MAX_RECORD_BYTES} limit",
                type="InvalidAuditRecord",
                non_retryable=True,
            )
        nc = await self._connection.get()
        js = nc.jetstream()
        last = await _last_record(nc, subject)
        if last is not None and last[1].get("hash") == record["hash"]:  # appended before, past the duplicate window
            return AppendedRecord(
                run_id=inp.run_id, index=inp.index, hash=record["hash"], stream_sequence=last[0], duplicate=True
            )
        # optimistic concurrency: nothing else may land on the run's subject between reading its head and appending
        headers["Nats-Expected-Last-Subject-Sequence"] = str(last[0] if last else 0)
        try:
            ack = await js.publish(subject, raw, headers=headers, timeout=10)
        except APIError as err:
            if err.err_code == 10071:  # wrong last sequence: another record landed; retried, the check above decides
                raise ApplicationError(
                    f"another record was appended to the chain of {inp.run_id[:200]!r} meanwhile", type="AuditRace"
                ) from None
            raise
        return AppendedRecord(
            run_id=inp.run_id,
            index=inp.index,
            hash=record["hash"],
            stream_sequence=ack.seq,
            duplicate=bool(ack.duplicate),
        )

    async def close(self) -> None:
        await self._connection.close()

    def activities(self) -> list[Callable[..., Any]]:
        return [self.append]


async def _last_record(nc: NATS, subject: str) -> tuple[int, dict[str, Any]] | None:
    """The stream sequence and body of the last record on ``subject``; the body is ``{}`` when it is unreadable."""
    try:
        msg = await nc.jetstream().get_last_msg(AUDIT_STREAM, subject)
    except NotFoundError:
        return None
    body: Any = {}
    data = msg.data or b""
    if len(data) <= MAX_RECORD_BYTES:
        try:
            body = load_json(data)
        except MalformedEvent:
            body = {}
    return int(msg.seq or 0), body if isinstance(body, dict) else {}


def is_hash(value: Any) -> bool:
    return isinstance(value, str) and bool(_HASH.match(value))
