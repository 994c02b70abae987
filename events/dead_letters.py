"""Dead letters: what the bridge writes to ``QUANTUM_DLQ`` for an event it cannot use, and the header-safe text in it.

A dead letter carries the original bytes when they fit in one NATS message with its headers (``max_payload`` counts
headers and body). When they do not, it carries the first :data:`EXCERPT_BYTES` with the header
:data:`PARTIAL_HEADER` (and the original's size and SHA-256), and the original stays in its stream under the sequence
in :data:`ORIGINAL_SEQUENCE_HEADER`. Every header value written is made safe first (:func:`header_value`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from events.envelope import DLQ_SUBJECT

log = logging.getLogger(__name__)

REASON_HEADER = "Quantum-Dlq-Reason"
ORIGINAL_SUBJECT_HEADER = "Quantum-Original-Subject"
ORIGINAL_SEQUENCE_HEADER = "Quantum-Original-Sequence"
ORIGINAL_STREAM_HEADER = "Quantum-Original-Stream"
ORIGINAL_SIZE_HEADER = "Quantum-Original-Size"
ORIGINAL_DIGEST_HEADER = "Quantum-Original-Sha256"
PARTIAL_HEADER = "Quantum-Dlq-Partial"
"""Present when the dead letter's body is only the start of the original (which then stays in its stream)."""

MAX_HEADER_CHARS = 1000
"""The longest header value the bridge writes, in characters once made safe."""
EXCERPT_BYTES = 4096
"""How much of an original too large to copy whole a dead letter keeps."""
_REASON_KIND = re.compile(r"^([A-Z][A-Za-z]{2,40})\b")


def reason_kind(reason: str) -> str:
    """The kind a dead letter's reason starts with (``ReviewRefused``, ``MalformedEvent``...): a bounded metric
    label, never the reason's text."""
    found = _REASON_KIND.match(reason)
    return found.group(1) if found else "Other"


def header_value(text: str, limit: int = MAX_HEADER_CHARS) -> str:
    """``text`` made safe as a NATS header value: control characters escaped, at most ``limit`` characters.

    A CR or LF in a header value would end the header (or the whole header block) early and let the rest be read
    as headers of its own; other control characters (and lone surrogates, which cannot be encoded) are escaped too.
    Longer text is cut and ends with ``...``.

    Args:
        text: Any text, possibly from an event or from another system's error message.
        limit: The most characters the value may have.

    Returns:
        Printable text without leading or trailing spaces, ``limit`` characters at most.
    """
    head = text[: limit + 1]
    safe = "".join(ch if ch == " " or ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in head)
    safe = safe.strip()
    if len(safe) > limit or len(text) > len(head):
        safe = safe[: max(0, limit - 3)].rstrip() + "..."
    return safe


def wire_size(payload: bytes, headers: dict[str, str] | None) -> int:
    """The size NATS counts against ``max_payload`` for a message: its header block plus its body.

    Args:
        payload: The body.
        headers: The headers, written as the client writes them (``NATS/1.0``, one ``Name: value`` line each).

    Returns:
        The bytes of the header block and the body together.
    """
    if not headers:
        return len(payload)
    block = len(b"NATS/1.0\r\n") + 2
    for name, value in headers.items():
        block += len(name.strip().encode()) + 2 + len(value.strip().encode(errors="surrogatepass")) + 2
    return block + len(payload)


def dead_letter_copy(
    data: bytes, *, subject: str, stream: str, sequence: int, reason: str, max_payload: int
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of the dead letter of one message, never larger than ``max_payload``.

    Args:
        data: The original message's bytes.
        subject: The subject it arrived on.
        stream: The stream that holds it.
        sequence: Its sequence in that stream.
        reason: Why it is dead-lettered (made safe here).
        max_payload: The server's limit on one message, headers included.

    Returns:
        The original bytes and the headers naming the reason and the original; or, when those do not fit in one
        message, the first bytes of the original with :data:`PARTIAL_HEADER` and the original's size and digest.

    Raises:
        ValueError: Not even the headers fit (a server limit of a few KiB).
    """
    headers = {
        REASON_HEADER: header_value(reason),
        ORIGINAL_SUBJECT_HEADER: header_value(subject),
        ORIGINAL_STREAM_HEADER: header_value(stream),
        ORIGINAL_SEQUENCE_HEADER: str(sequence),
        ORIGINAL_SIZE_HEADER: str(len(data)),
        "Nats-Msg-Id": header_value(f"dlq-{stream}-{sequence}"),
    }
    if wire_size(data, headers) <= max_payload:
        return data, headers
    headers[ORIGINAL_DIGEST_HEADER] = hashlib.sha256(data).hexdigest()
    headers[PARTIAL_HEADER] = f"the body is the first {EXCERPT_BYTES} bytes at most of {len(data)}"
    room = max_payload - wire_size(b"", headers)
    if room < 0:
        headers[REASON_HEADER] = header_value(reason, 200)
        room = max_payload - wire_size(b"", headers)
        if room < 0:
            raise ValueError(f"a dead letter's headers alone are over the server's max_payload of {max_payload}")
    excerpt = data[: min(EXCERPT_BYTES, room)]
    headers[PARTIAL_HEADER] = f"the body is the first {len(excerpt)} of {len(data)} bytes"
    return excerpt, headers


async def dead_letter(
    js: JetStreamContext,
    msg: Msg,
    reason: str,
    *,
    final: bool,
    max_payload: int,
    retry_delays: tuple[float, ...],
) -> bool:
    """Publish the dead letter of ``msg`` (whole, or partial when too large), then terminate the message; whether it
    was dead-lettered.

    When the DLQ cannot be reached the message is delivered again later; on its ``final`` delivery, when no later
    delivery will come, the publish is tried a few times before giving up on it, logging where the original stays.
    """
    meta = msg.metadata
    sequence = meta.sequence.stream
    try:
        body, headers = dead_letter_copy(
            msg.data, subject=msg.subject, stream=meta.stream, sequence=sequence, reason=reason, max_payload=max_payload
        )
    except ValueError as err:  # a server that takes messages of a few KiB at most
        log.error("cannot dead-letter message %s of %s: %s", sequence, meta.stream, err)
        if not final:
            await msg.nak(delay=retry_delays[-1])
        return False
    attempts = 3 if final else 1
    for attempt in range(1, attempts + 1):
        try:
            await js.publish(DLQ_SUBJECT, body, headers=headers, timeout=10)
            break
        except Exception as err:  # the DLQ is unreachable: keep the message where it is
            problem = header_value(f"{type(err).__name__}: {err}")
            if attempt < attempts:
                await asyncio.sleep(retry_delays[min(attempt, len(retry_delays)) - 1])
                continue
            if final:
                log.error(
                    "message %s of %s cannot be dead-lettered (%s) and will not be delivered again; "
                    "it stays in the stream until its max age",
                    sequence,
                    meta.stream,
                    problem,
                )
                return False
            log.warning("cannot dead-letter message %s (%s); it will be delivered again", sequence, problem)
            await msg.nak(delay=retry_delays[-1])
            return False
    await msg.term()
    log.info(
        "dead-lettered message %s%s: %s",
        sequence,
        " (partially: too large to copy whole)" if PARTIAL_HEADER in headers else "",
        headers[REASON_HEADER],
    )
    return True
