"""A real local HTTP server that speaks the OpenAI chat-completions and embeddings protocol, scripted per test."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # a chat completion's message content
    body: dict[str, Any] | None = None  # or a whole body (errors, embeddings)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def chat_body(content: str, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59},
    }


def error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class OpenAIServer:
    """Serves ``/v1/chat/completions`` and ``/v1/embeddings`` from a queue of scripted replies; records requests."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                payload = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(
                    {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "json": payload}
                )
                reply = (
                    server.replies.popleft()
                    if server.replies
                    else Reply(status=500, body=error_body("no script", "server_error"))
                )
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.body is not None:
                    body = reply.body
                elif self.path.endswith("/embeddings"):
                    body = {
                        "object": "list",
                        "model": payload.get("model"),
                        "data": [
                            {"object": "embedding", "index": i, "embedding": [float(len(text)), 1.0, 0.5]}
                            for i, text in enumerate(payload.get("input", []))
                        ],
                        "usage": {"prompt_tokens": 3, "total_tokens": 3},
                    }
                else:
                    body = chat_body(reply.content or "", payload.get("model", "?"))
                data = json.dumps(body).encode()
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)
