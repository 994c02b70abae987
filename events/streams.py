"""The JetStream streams of the bus, created (or brought up to date) idempotently."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

from events.envelope import DLQ_SUBJECT

log = logging.getLogger(__name__)

EVENTS_STREAM = "QUANTUM_EVENTS"
DLQ_STREAM = "QUANTUM_DLQ"
EVENTS_SUBJECTS = "quantum.events.>"
DLQ_SUBJECTS = "quantum.dlq.>"

__all__ = ["DLQ_STREAM", "DLQ_SUBJECT", "EVENTS_STREAM", "StreamLimits", "ensure_streams"]


@dataclass(frozen=True)
class StreamLimits:
    """Retention of the two streams; the duplicate window is how long a repeated event id is dropped."""

    duplicate_window_seconds: float = 120.0
    events_max_age_seconds: float = 7 * 24 * 3600
    events_max_bytes: int = 1024**3
    dlq_max_age_seconds: float = 30 * 24 * 3600
    dlq_max_bytes: int = 256 * 1024**2


def stream_configs(limits: StreamLimits) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_SUBJECTS],
            storage=StorageType.FILE,
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
            duplicate_window=limits.duplicate_window_seconds,
            max_age=limits.dlq_max_age_seconds,
            max_bytes=limits.dlq_max_bytes,
            description="Events that could not be used, with the reason in a header",
        ),
    ]


async def ensure_streams(js: JetStreamContext, limits: StreamLimits | None = None) -> None:
    """Create both streams, or update them to ``limits``; running it again changes nothing."""
    for config in stream_configs(limits or StreamLimits()):
        try:
            await js.add_stream(config)
        except BadRequestError:  # exists with another configuration
            await js.update_stream(config)
            log.info("updated stream %s", config.name)
