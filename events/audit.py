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

Runs since gate challenges keep one chain per *execution*: a run started again under the same workflow id (a reset,
a start after the first closed) has another Temporal run id, its records name it (``execution``), and its genesis
is derived from both, so its chain is its own and never a fork of the one before. Their records (version 2) also
carry what the reviewer signed (``challenge``, ``expires_at``, ``signature``, with the ``nonce`` and ``digest``), so
anyone holding the reviewers' public keys can check an ``authenticated`` record against the reviewer's own
signature.

Every record the worker writes is signed with the worker's audit key (``sig``: Ed25519 over the record's hash;
``key_id``: the first 16 hex digits of the sha256 of the public key; neither is part of the hash): a publisher on
the bus without that key can append well-hashed records, but not signed ones, and ``quantum audit verify`` flags
them. Refused reviews are not in the chain: each gate opening's tally of them (counts by kind and the last few,
clipped) is one record on ``quantum.audit.refused.<digest of the run id>`` when the run ends, signed the same way.

Appending is the ``audit.append`` activity (:class:`AuditRecorder`): workflow code does no I/O. It is idempotent
twice over: the JetStream ``Nats-Msg-Id`` is derived from the run id and the caller's idempotency key (a retry
within the duplicate window is dropped by the server), and before publishing the activity reads the run's last
record: when that record *is* this one (same hash), it was already appended (a retry after the window).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
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
REFUSED_SUBJECT_PREFIX = "quantum.audit.refused."
RECORD_VERSION = 1
EXECUTION_RECORD_VERSION = 2
"""Records of runs with gate challenges: bound to the execution, carrying the reviewer's signed fields."""
SUMMARY_VERSION = 1
UNSIGNED_FIELDS = frozenset({"hash", "sig", "key_id"})
"""What a record's hash does not cover: the hash itself and the worker's signature of it."""
SIGNATURE_DOMAIN = b"quantum-audit-record\x00"
MAX_SPENT_NONCES = 2000
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
    "challenge": 64,
    "signature": 200,
    "expires_at": 64,
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
    """The hash of a record: the sha256 of the canonical bytes of every field but ``hash`` and the signature."""
    return hashlib.sha256(canonical({k: v for k, v in fields.items() if k not in UNSIGNED_FIELDS})).hexdigest()


def key_id(public_key: bytes) -> str:
    """How records name the worker key that signed them."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def signed_bytes(record_hash: str) -> bytes:
    """What the worker's audit key signs for a record: a domain and the record's hash."""
    return SIGNATURE_DOMAIN + record_hash.encode("ascii")


def _id_bytes(run_id: str) -> bytes:
    return run_id.encode("utf-8", errors="surrogatepass")


def genesis(run_id: str, execution: str = "") -> str:
    """What the first record of ``run_id`` (of its ``execution``, for runs with gate challenges) links to."""
    base = f"{GENESIS_DOMAIN}\x00".encode() + _id_bytes(run_id)
    if execution:
        base += b"\x00" + _id_bytes(execution)
    return hashlib.sha256(base).hexdigest()


def run_subject(run_id: str, prefix: str = AUDIT_SUBJECT_PREFIX) -> str:
    """The subject of ``run_id``'s records (of its summaries of refused reviews, with ``REFUSED_SUBJECT_PREFIX``)."""
    return prefix + hashlib.sha256(_id_bytes(run_id)).hexdigest()[:32]


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
    challenge: str = Field(default="", description="The gate opening's challenge the reviewer signed.")
    expires_at: str = Field(default="", description="The expiry the reviewer signed.")
    signature: str = Field(default="", description="The reviewer's Ed25519 signature (base64), as received.")

    @field_validator(
        "gate",
        "reviewer",
        "comment",
        "reason",
        "digest",
        "identity",
        "nonce",
        "challenge",
        "expires_at",
        "signature",
        mode="before",
    )
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
    execution: str = Field(
        default="", max_length=200, description="The Temporal run id of the execution (empty in older runs)."
    )

    def record(self) -> dict[str, Any]:
        """The record this input appends, with its hash."""
        review = self.review
        fields: dict[str, Any] = {
            "v": EXECUTION_RECORD_VERSION if self.execution else RECORD_VERSION,
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
        if self.execution:
            fields.update(
                execution=self.execution,
                challenge=review.challenge,
                expires_at=review.expires_at,
                signature=review.signature,
            )
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
    execution: str = ""

    @classmethod
    def start(cls, run_id: str, execution: str = "") -> AuditChain:
        return cls(run_id=run_id, index=0, head=genesis(run_id, execution), execution=execution)

    def next_input(self, review: ReviewFields) -> AppendAuditInput:
        index = self.index + 1
        key = f"review.{self.execution}.{index}" if self.execution else f"review.{index}"
        return AppendAuditInput(
            run_id=self.run_id, index=index, prev=self.head, key=key, review=review, execution=self.execution
        )

    def advance(self, appended: AppendedRecord) -> None:
        self.index, self.head = appended.index, appended.hash


class RefusalTally(BaseModel):
    """The refused reviews of one gate opening (``gate`` empty: reviews of no open gate), as a run keeps them until
    it ends: counts by kind, the last few in full (clipped), how many were left out."""

    gate: str = ""
    opening: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    recent: list[ReviewFields] = Field(default_factory=list)
    left_out: int = 0

    def count(self, kind: str, review: ReviewFields, *, keep: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.recent.append(review)
        if len(self.recent) > keep:
            del self.recent[0]
            self.left_out += 1


class RefusalSummaryInput(BaseModel):
    """One gate opening's tally of refused reviews, for the run's subject of summaries beside its chain."""

    model_config = ConfigDict(extra="ignore")

    run_id: str = Field(min_length=1, max_length=MAX_RUN_ID_CHARS)
    execution: str = Field(default="", max_length=200)
    tally: RefusalTally
    summarized_at: datetime

    def record(self) -> dict[str, Any]:
        tally = self.tally
        recent = [
            {**review.model_dump(mode="json", exclude={"signature"}), "comment": _clip(review.comment, 200)}
            for review in tally.recent
        ]
        fields: dict[str, Any] = {
            "v": SUMMARY_VERSION,
            "kind": "refused-reviews",
            "run_id": self.run_id,
            "execution": self.execution,
            "gate": _clip(tally.gate, 40),
            "opening": tally.opening,
            "counts": {_clip(k, 40): int(v) for k, v in sorted(tally.counts.items())[:50]},
            "refused": sum(tally.counts.values()),
            "recent": recent,
            "left_out": tally.left_out,
            "summarized_at": utc_text(self.summarized_at),
        }
        fields["hash"] = digest(fields)
        return fields


class SpentNoncesInput(BaseModel):
    run_id: str = Field(min_length=1, max_length=MAX_RUN_ID_CHARS)
    execution: str = Field(default="", max_length=200)


class AuditRecorder:
    """Appends review records to ``QUANTUM_AUDIT`` over one NATS connection, opened on first use, signing each
    with the worker's audit key when it has one."""

    def __init__(
        self, nats_url: str, *, credentials: str | None = None, signing_key: Ed25519PrivateKey | None = None
    ) -> None:
        self.nats_url = nats_url
        self._connection = LazyConnection(nats_url, credentials=credentials)
        self._signing_key = signing_key
        self._key_id = key_id(public_bytes(signing_key)) if signing_key is not None else ""

    def _signed(self, record: dict[str, Any]) -> dict[str, Any]:
        if self._signing_key is None:
            return record
        signature = self._signing_key.sign(signed_bytes(record["hash"]))
        return {**record, "sig": base64.b64encode(signature).decode("ascii"), "key_id": self._key_id}

    @activity.defn(name="audit.refusals")
    async def refusals(self, inp: RefusalSummaryInput) -> int:
        """Put one gate opening's summary of refused reviews beside the run's chain; returns its stream sequence.
        Idempotent: its ``Nats-Msg-Id`` is derived from the run, the execution and the opening."""
        record = inp.record()
        if len(canonical(record)) > MAX_RECORD_BYTES - 256:  # room for the signature: keep the counts only
            record = {k: v for k, v in record.items() if k != "hash"}
            record.update(recent=[], left_out=record["left_out"] + len(record["recent"]))
            record["hash"] = digest(record)
        raw = canonical(self._signed(record))
        key = f"refused.{inp.execution}.{inp.tally.gate}.{inp.tally.opening}"
        nc = await self._connection.get()
        ack = await nc.jetstream().publish(
            run_subject(inp.run_id, REFUSED_SUBJECT_PREFIX),
            raw,
            headers={"Nats-Msg-Id": message_id(inp.run_id, key)},
            timeout=10,
        )
        return int(ack.seq)

    @activity.defn(name="audit.spent_nonces")
    async def spent_nonces(self, inp: SpentNoncesInput) -> list[str]:
        """The nonces of reviews counted by earlier executions under the run's workflow id (at most
        ``MAX_SPENT_NONCES``, the newest), read from the run's subject."""
        nc = await self._connection.get()
        js = nc.jetstream()
        spent: list[str] = []
        sequence = 1
        for _ in range(MAX_SPENT_NONCES * 4):
            try:
                msg = await js.get_msg(AUDIT_STREAM, seq=sequence, subject=run_subject(inp.run_id), next=True)
            except NotFoundError:
                break
            sequence = int(msg.seq or sequence) + 1
            body = _body(msg.data or b"")
            nonce = body.get("nonce")
            if body.get("accepted") is True and isinstance(nonce, str) and nonce:
                if body.get("execution") != inp.execution:
                    spent.append(nonce[:200])
        return spent[-MAX_SPENT_NONCES:]

    @activity.defn(name="audit.append")
    async def append(self, inp: AppendAuditInput) -> AppendedRecord:
        record = self._signed(inp.record())
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
        return [self.append, self.refusals, self.spent_nonces]


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _body(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_RECORD_BYTES:
        return {}
    try:
        body = load_json(data)
    except MalformedEvent:
        return {}
    return body if isinstance(body, dict) else {}


async def _last_record(nc: NATS, subject: str) -> tuple[int, dict[str, Any]] | None:
    """The stream sequence and body of the last record on ``subject``; the body is ``{}`` when it is unreadable."""
    try:
        msg = await nc.jetstream().get_last_msg(AUDIT_STREAM, subject)
    except NotFoundError:
        return None
    return int(msg.seq or 0), _body(msg.data or b"")


def is_hash(value: Any) -> bool:
    return isinstance(value, str) and bool(_HASH.match(value))
