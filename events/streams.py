"""The JetStream streams of the bus, created (or brought up to date) idempotently."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

from events.audit import AUDIT_STREAM, AUDIT_SUBJECTS, MAX_RECORD_BYTES
from events.envelope import DLQ_SUBJECT

log = logging.getLogger(__name__)

EVENTS_STREAM = "QUANTUM_EVENTS"
DLQ_STREAM = "QUANTUM_DLQ"
EVENTS_SUBJECTS = "quantum.events.>"
DLQ_SUBJECTS = "quantum.dlq.>"

__all__ = ["AUDIT_STREAM", "DLQ_STREAM", "DLQ_SUBJECT", "EVENTS_STREAM", "StreamLimits", "ensure_streams"]


@dataclass(frozen=True)
class StreamLimits:
    """Retention of the streams; the duplicate window is how long a repeated event (or record) id is dropped.

    The audit stream keeps its records for ever (no max age) and, once full, refuses new records rather than
    erasing old ones; messages cannot be deleted from it nor the stream purged through the API.
    """

    duplicate_window_seconds: float = 120.0
    events_max_age_seconds: float = 7 * 24 * 3600
    events_max_bytes: int = 1024**3
    dlq_max_age_seconds: float = 30 * 24 * 3600
    dlq_max_bytes: int = 256 * 1024**2
    audit_max_bytes: int = 1024**3
    replicas: int = 1
    """Copies of each stream in a NATS cluster (3 survives the loss of one server); 1 on a single server."""


def stream_configs(limits: StreamLimits) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_SUBJECTS],
            storage=StorageType.FILE,
            num_replicas=limits.replicas,
            duplicate_window=limits.duplicate_window_seconds,
            max_age=limits.events_max_age_seconds,
            max_bytes=limits.events_max_bytes,
            discard=DiscardPolicy.OLD,
            description="Quantum Suite domain events (CloudEvents 1.0, JSON)",
        ),
        StreamConfig(
            name=DLQ_STREAM,
            subjects=[DLQ_SUBJECTS],
            storage=StorageType.FILE,
            num_replicas=limits.replicas,
            duplicate_window=limits.duplicate_window_seconds,
            max_age=limits.dlq_max_age_seconds,
            max_bytes=limits.dlq_max_bytes,
            description="Events that could not be used, with the reason in a header",
        ),
        StreamConfig(
            name=AUDIT_STREAM,
            subjects=[AUDIT_SUBJECTS],
            storage=StorageType.FILE,
            num_replicas=limits.replicas,
            duplicate_window=limits.duplicate_window_seconds,
            max_age=0,
            max_bytes=limits.audit_max_bytes,
            max_msg_size=2 * MAX_RECORD_BYTES,
            discard=DiscardPolicy.NEW,
            deny_delete=True,
            deny_purge=True,
            description="Every review of every run, one hash chain per run (events/audit.py)",
        ),
    ]


async def ensure_streams(js: JetStreamContext, limits: StreamLimits | None = None) -> None:
    """Create the streams, or update them to ``limits``; running it again changes nothing."""
    for config in stream_configs(limits or StreamLimits()):
        try:
            await js.add_stream(config)
        except BadRequestError:  # exists with another configuration
            await js.update_stream(config)
            log.info("updated stream %s", config.name)
