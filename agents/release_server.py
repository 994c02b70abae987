"""The process a deployment runs: serves a release's manifest, its health and its metrics.

It never imports or executes the released code (generated code is untrusted and runs only in the sandbox); it
serves what was released: ``/healthz`` with the release digest, ``/files`` with the released files, ``/metrics``
in the Prometheus text format. Run as ``python -m agents.release_server --root DIR --release DIGEST``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def build_server(root: Path, release: str, host: str, port: int) -> ThreadingHTTPServer:
    started = time.time()
    counts: dict[str, int] = {}
    lock = threading.Lock()
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            with lock:
                counts[self.path] = counts.get(self.path, 0) + 1
            if self.path == "/healthz":
                body = {"status": "ok", "release": release, "uptime_seconds": round(time.time() - started, 3)}
                self._send(HTTPStatus.OK, json.dumps(body).encode(), "application/json")
            elif self.path == "/files":
                self._send(HTTPStatus.OK, json.dumps({"release": release, "files": files}).encode(), "application/json")
            elif self.path == "/metrics":
                self._send(HTTPStatus.OK, metrics().encode(), "text/plain; version=0.0.4")
            else:
                self._send(HTTPStatus.NOT_FOUND, b'{"error": "not found"}', "application/json")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    def metrics() -> str:
        lines = [
            "# HELP quantum_release_up Whether the release process is serving.",
            "# TYPE quantum_release_up gauge",
            f'quantum_release_up{{release="{release}"}} 1',
            "# HELP quantum_release_start_time_seconds When the release process started.",
            "# TYPE quantum_release_start_time_seconds gauge",
            f"quantum_release_start_time_seconds {started}",
            "# HELP quantum_release_requests_total Requests served, by path.",
            "# TYPE quantum_release_requests_total counter",
        ]
        with lock:
            lines += [f'quantum_release_requests_total{{path="{p}"}} {n}' for p, n in sorted(counts.items())]
        return "\n".join(lines) + "\n"

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--release", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="Where to write the port actually bound.")
    args = parser.parse_args(argv)
    server = build_server(args.root, args.release, args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(server.server_address[1]))
        tmp.replace(args.port_file)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
