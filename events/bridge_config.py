"""How the inbound bridge is configured, what becomes of each message, and the errors it tells apart."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from temporalio.service import RPCStatusCode

from events.catalog import INBOUND
from events.envelope import SUBJECT_PREFIX, subject_for
from events.streams import EVENTS_STREAM

REVIEW_SUBMITTED = "quantum.review.submitted"

_REMEMBERED = 10_000  # messages whose failures the bridge remembers at once; the oldest are forgotten first

# Temporal answers these when it cannot take the call now; anything else is about the call itself
TRANSIENT = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
    RPCStatusCode.INTERNAL,
    RPCStatusCode.UNKNOWN,
    RPCStatusCode.CANCELLED,
}


class Outcome(StrEnum):
    """What became of one message."""

    STARTED = "started"
    DUPLICATE = "duplicate"
    SIGNALLED = "signalled"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"
    RETRY = "retry"
    """Temporal cannot take the call now: retried later, and the bridge backs off."""
    FAILED = "failed"
    """This message failed for another reason (or could not be dead-lettered): retried later, nobody backs off."""


@dataclass(frozen=True)
class BridgeConfig:
    """How the bridge consumes; the application fills it from settings.

    Attributes:
        task_queue: Where the started workflows run.
        consumer: The durable consumer's name.
        batch: Messages fetched (and handled concurrently) at once.
        max_deliver: Deliveries of one message; the last is kept for dead-lettering it, so at least 2.
        ack_wait_seconds: How long a delivered message may stay unsettled before it is delivered again.
        max_event_bytes: Larger events are dead-lettered.
        retry_delays: Growing delays between deliveries of a message (and of the bridge's back-off).
        failure_attempts: Deliveries of a message that fail unexpectedly before it is dead-lettered.
        rpc_timeout_seconds: The limit of each Temporal call.
        stream: The stream consumed (a benchmark on a shared bus uses one of its own).
        subject_prefix: What an event's subject is its type's ``<noun>.<verb>`` after (see ``subject_for``).
        inbound_subjects: The subjects consumed; by default, those of the inbound types after ``subject_prefix``.
        review_consumer: The durable consumer of reviews, a lane of their own: a flood of reviews is fetched and
            handled apart from requests and cancellations, which it never holds up.
        reviews_per_run: Reviews of one run in flight at once; the others of that run wait their turn.
    """

    task_queue: str = "quantum-workflows"
    consumer: str = "quantum-bridge"
    batch: int = 64
    max_deliver: int = 20
    ack_wait_seconds: float = 30.0
    max_event_bytes: int = 256 * 1024
    retry_delays: tuple[float, ...] = (0.5, 1, 2, 4, 8, 15)
    failure_attempts: int = 3
    rpc_timeout_seconds: float = 5.0
    stream: str = EVENTS_STREAM
    subject_prefix: str = SUBJECT_PREFIX
    inbound_subjects: tuple[str, ...] = ()
    review_consumer: str = "quantum-bridge-reviews"
    reviews_per_run: int = 2

    def __post_init__(self) -> None:
        if self.max_deliver < 2:
            raise ValueError("max_deliver must be at least 2: the last delivery is kept for dead-lettering")
        if self.failure_attempts < 1:
            raise ValueError("failure_attempts must be at least 1")
        if not self.retry_delays:
            raise ValueError("retry_delays must name at least one delay")
        if self.reviews_per_run < 1:
            raise ValueError("reviews_per_run must be at least 1")
        if not self.inbound_subjects:
            subjects = tuple(subject_for(t, self.subject_prefix) for t in INBOUND)
            object.__setattr__(self, "inbound_subjects", subjects)

    @property
    def review_subject(self) -> str:
        return subject_for(REVIEW_SUBMITTED, self.subject_prefix)

    def lanes(self) -> dict[str, list[str]]:
        """Each durable consumer and the subjects it takes: reviews apart from everything else."""
        reviews = [s for s in self.inbound_subjects if s == self.review_subject]
        others = [s for s in self.inbound_subjects if s != self.review_subject]
        return {
            name: subjects for name, subjects in ((self.consumer, others), (self.review_consumer, reviews)) if subjects
        }


class TemporalUnavailable(Exception):
    """Temporal cannot take the call now; the message is retried later."""


class RunBusy(Exception):
    """One run cannot take a review now (Temporal answered that it is busy): this message alone is retried later;
    nobody backs off."""


class DeadLetter(Exception):
    """Temporal refused the call for good (no such run, an invalid request): the message is dead-lettered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Failures:
    """What went wrong with the messages still being retried, by stream sequence; bounded, oldest forgotten first."""

    def __init__(self, size: int = _REMEMBERED) -> None:
        self._size = size
        self._seen: OrderedDict[int, tuple[int, str]] = OrderedDict()

    def record(self, sequence: int, error: str, *, unexpected: bool) -> int:
        """Remember ``error`` as the last of ``sequence``; returns how many unexpected failures it has had."""
        count, _ = self._seen.pop(sequence, (0, ""))
        count += int(unexpected)
        self._seen[sequence] = (count, error)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return count

    def last_error(self, sequence: int) -> str | None:
        entry = self._seen.get(sequence)
        return entry[1] if entry else None

    def forget(self, sequence: int) -> None:
        self._seen.pop(sequence, None)
