"""How ``quantum codec-server`` holds its connections: requests are read whole by one thread, then answered by a
few.

A thread per connection lets a client that opens many connections and never finishes a request hold as many
threads (and each for as long as its socket timeout). Here one thread reads every connection's request without
blocking, until its head and the body its ``Content-Length`` announces have arrived; only then does one of a small
pool of threads answer it. A connection that sends nothing for :attr:`ConnectionLimits.idle_seconds`, or has not
sent its whole request after :attr:`ConnectionLimits.request_seconds`, is answered 408 and closed; beyond
:attr:`ConnectionLimits.max_connections` held at once, a new one is answered 503 and closed.
"""

from __future__ import annotations

import json
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
"""The largest request body taken; Temporal's own limit on one payload is 2 MiB."""
MAX_HEAD_BYTES = 64 * 1024
"""The largest request line and headers taken (http.server's own limit on one line)."""
CONTENT_LENGTH = re.compile(r"[0-9]{1,10}")
"""A ``Content-Length`` as taken: ASCII digits only (``str.isdigit`` also takes ``²``, which ``int`` refuses)."""
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """What the codec server holds at once, and for how long.

    Attributes:
        max_connections: Connections held at once (being read, answered or drained); more are answered 503.
        workers: Threads answering complete requests.
        idle_seconds: How long a connection may send nothing before it is answered 408 and closed.
        request_seconds: How long a whole request may take to arrive.
        max_buffered_bytes: Request bytes held at once across connections; a request past it is answered 503.
        write_seconds: The socket timeout while an answer is written.
    """

    max_connections: int = 512
    workers: int = 8
    idle_seconds: float = 5.0
    request_seconds: float = 30.0
    max_buffered_bytes: int = 64 * 1024 * 1024
    write_seconds: float = 10.0


def content_length(values: list[str]) -> int | None:
    """The body's length of a request with these ``Content-Length`` values: exactly one, of ASCII digits, else
    None."""
    if len(values) != 1 or not CONTENT_LENGTH.fullmatch(values[0].strip(" \t")):
        return None
    return int(values[0])


def declared_length(head: bytes) -> int | None:
    """The body's length the request head announces (as :func:`content_length` reads it), else None."""
    return content_length(
        [
            value.decode("latin-1")  # as http.server decodes headers
            for name, _, value in (line.rstrip(b"\r").partition(b":") for line in head.split(b"\n")[1:])
            if name.lower() == b"content-length"
        ]
    )


def head_size(data: bytes | bytearray) -> int | None:
    """How many bytes the request line and headers at the start of ``data`` take, None while they go on."""
    ends = [found + len(end) for end in _HEAD_ENDS if (found := data.find(end)) >= 0]
    return min(ends) if ends else None


def request_size(head: bytes) -> int:
    """How many bytes the request with ``head`` takes: with its body when one of at most :data:`MAX_BODY_BYTES`
    is announced; without one otherwise (such a request is refused without reading its body)."""
    length = declared_length(head)
    return len(head) + (length if length is not None and length <= MAX_BODY_BYTES else 0)


def quick_answer(sock: socket.socket, status: HTTPStatus, message: str) -> None:
    """Send a short JSON error without waiting for the client, then close ``sock``."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.0 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.setblocking(False)
        sock.send(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # the client is gone, or not reading: closing is all that is left
        pass
    sock.close()


@dataclass(eq=False)
class _Reading:
    """A connection whose request is still arriving, or whose refused body is being read and dropped."""

    sock: socket.socket
    address: Any
    opened: float
    last: float
    data: bytearray = field(default_factory=bytearray)
    discard: int = 0


Dispatch = Callable[[socket.socket, Any, bytes], None]


class Reception:
    """Reads whole requests on one thread and hands each to ``dispatch`` (which answers it on another thread and
    then calls :meth:`finished`).

    Args:
        dispatch: Called on the reception thread with the socket, the client's address and the request's bytes.
        limits: How much is held at once, and for how long.
    """

    def __init__(self, dispatch: Dispatch, limits: ConnectionLimits) -> None:
        self._dispatch = dispatch
        self.limits = limits
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake_out = socket.socketpair()
        for end in (self._wake_in, self._wake_out):
            end.setblocking(False)
        self._selector.register(self._wake_in, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._arrivals: list[_Reading] = []
        self._held = 0
        self._buffered = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="codec-reception", daemon=True)
        self._thread.start()

    @property
    def held(self) -> int:
        """How many connections are held now: being read, answered or drained."""
        with self._lock:
            return self._held

    def admit(self, sock: socket.socket, address: Any) -> bool:
        """Start reading a new connection's request; False when :attr:`ConnectionLimits.max_connections` are held."""
        with self._lock:
            if self._stopping or self._held >= self.limits.max_connections:
                return False
            self._held += 1
        self._arrive(_Reading(sock, address, opened=time.monotonic(), last=time.monotonic()))
        return True

    def finished(self, sock: socket.socket, request_bytes: int, *, unread: int = 0) -> None:
        """The answer to a dispatched request is written: read and drop the ``unread`` bytes of its body still to
        come (so that the client, still sending, reads the answer rather than a reset), else close ``sock``."""
        with self._lock:
            self._buffered -= request_bytes
        if unread <= 0:
            self._close(sock)
            return
        now = time.monotonic()
        self._arrive(_Reading(sock, None, opened=now, last=now, discard=unread))

    def stop(self) -> None:
        """Stop reading and close every connection being read."""
        with self._lock:
            self._stopping = True
        self._wake()
        self._thread.join(10)

    def _arrive(self, reading: _Reading) -> None:
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self._arrivals.append(reading)
        if stopping:
            self._close(reading.sock)
            return
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_out.send(b"x")
        except OSError:  # the buffer is full: the reception thread is already due to wake
            pass

    def _close(self, sock: socket.socket) -> None:
        sock.close()
        with self._lock:
            self._held -= 1

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._selector.select(timeout=0.25):
                    if key.data is None:
                        self._take_arrivals()
                    else:
                        self._read(key.data)
                self._expire(time.monotonic())
        except Exception:  # a bug here would stop every connection: say so loudly
            log.exception("the codec server's reception stopped")
        finally:
            self._close_all()

    def _take_arrivals(self) -> None:
        with self._lock:
            arrivals, self._arrivals = self._arrivals, []
        while True:
            try:
                if not self._wake_in.recv(4096):
                    break
            except BlockingIOError:
                break
        for reading in arrivals:
            reading.sock.setblocking(False)
            self._selector.register(reading.sock, selectors.EVENT_READ, reading)

    def _read(self, reading: _Reading) -> None:
        try:
            chunk = reading.sock.recv(_CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client closed (or reset) its end
            self._drop(reading)
            return
        reading.last = time.monotonic()
        if not reading.discard:
            self._take(reading, chunk)
            return
        reading.discard -= len(chunk)
        if reading.discard <= 0:
            self._drop(reading)

    def _take(self, reading: _Reading, chunk: bytes) -> None:
        """Add ``chunk`` to the request being read; hand the request on once it is whole."""
        with self._lock:
            over = self._buffered + len(chunk) > self.limits.max_buffered_bytes
            if not over:
                self._buffered += len(chunk)
        if over:
            self._refuse(reading, HTTPStatus.SERVICE_UNAVAILABLE, "the server is busy: try again shortly")
            return
        reading.data += chunk
        head = head_size(reading.data)
        if head is None:
            if len(reading.data) > MAX_HEAD_BYTES:
                self._refuse(reading, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "the request's head is too long")
            return
        size = request_size(bytes(reading.data[:head]))
        if len(reading.data) >= size:
            self._selector.unregister(reading.sock)
            reading.sock.settimeout(self.limits.write_seconds)
            self._dispatch(reading.sock, reading.address, bytes(reading.data))

    def _refuse(self, reading: _Reading, status: HTTPStatus, message: str) -> None:
        self._forget(reading)
        quick_answer(reading.sock, status, message)
        with self._lock:
            self._held -= 1

    def _drop(self, reading: _Reading) -> None:
        self._forget(reading)
        self._close(reading.sock)

    def _forget(self, reading: _Reading) -> None:
        self._selector.unregister(reading.sock)
        with self._lock:
            self._buffered -= len(reading.data)
        reading.data.clear()

    def _expire(self, now: float) -> None:
        """Answer 408 to the requests that stalled or take too long; close the drained connections that stalled."""
        limits = self.limits
        for key in list(self._selector.get_map().values()):
            reading: _Reading | None = key.data
            if reading is None:
                continue
            if now - reading.last > limits.idle_seconds or now - reading.opened > limits.request_seconds:
                if reading.discard:
                    self._drop(reading)
                else:
                    self._refuse(reading, HTTPStatus.REQUEST_TIMEOUT, "the request did not arrive in time")

    def _close_all(self) -> None:
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                self._drop(key.data)
        with self._lock:
            arrivals, self._arrivals = self._arrivals, []
        for reading in arrivals:
            self._close(reading.sock)
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()
