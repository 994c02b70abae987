"""{{title}}: an HTTP JSON service with a health endpoint.

Generated for the request: {{prompt}}
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SERVICE_NAME = "{{project}}"


class Store:
    """A thread-safe in-memory collection of JSON items keyed by id."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value

    def get(self, key: str) -> Any | None:
        with self._lock:
            return self._items.get(key)

    def all(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._items)


def make_handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: HTTPStatus, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            if self.path == "/healthz":
                self._send(HTTPStatus.OK, {"status": "ok", "service": SERVICE_NAME})
            elif self.path == "/items":
                self._send(HTTPStatus.OK, store.all())
            elif self.path.startswith("/items/"):
                item = store.get(self.path.removeprefix("/items/"))
                if item is None:
                    self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
                else:
                    self._send(HTTPStatus.OK, item)
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_PUT(self) -> None:  # noqa: N802
            if not self.path.startswith("/items/") or len(self.path) <= len("/items/"):
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            try:
                value = json.loads(self.rfile.read(length) or b"null")
            except json.JSONDecodeError:
                self._send(HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"})
                return
            store.put(self.path.removeprefix("/items/"), value)
            self._send(HTTPStatus.CREATED, value)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    return Handler


def make_server(port: int = 0, host: str = "127.0.0.1", store: Store | None = None) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (0 picks a free port); call ``serve_forever`` to run it."""
    return ThreadingHTTPServer((host, port), make_handler(store or Store()))
