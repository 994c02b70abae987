"""The release host: the process a deployment runs, outside the sandbox, in front of what was built.

Run as ``python -m agents.release_server --kind service|library ...`` by the deploy agent. It is our own code and
never imports or executes the released code.

* A **service** (the code defines ``make_server(port, host)``) is served by its own generated code, inside the
  sandbox (:meth:`agents.sandbox.Sandbox.command`: bubblewrap, every namespace unshared so no network, a read-only
  system, uid 65534, a cleared environment, rlimits, a pids cgroup). The host creates a listening Unix socket in a
  directory of its own that the sandbox never sees and hands it over on ``exec``; the launcher
  (:mod:`agents.release_launcher`, copied beside the code) makes the service's server and swaps its listening
  socket for that one. The host listens on the loopback port of the deployment and forwards each request there
  (bounded, one request per connection), adding ``Quantum-Release`` (the release digest) and ``Quantum-Origin:
  service`` to what the service answers. Only ``GET /metrics`` is the host's own. When the service exits, the host
  exits too (the worker sees the release gone); when the host is stopped or dies, the sandbox dies with it.
* A **library** is released as a wheel, kept in the release's artifact. The host serves ``/healthz`` (the release
  and the wheel), ``/files`` and ``/metrics``; whether the wheel installs and works is checked by ``deploy.verify``
  in a fresh venv in the sandbox.

The release directory the sandbox writes to is rebuilt from the artifact at every start: what the service wrote
there is hostile data, never read by the host, and never outlives a restart.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agents.processes import GROUP_GUARD, die_with_parent, signal_group
from agents.sandbox import SANDBOX_PATH, Limits, PidsCgroup, Sandbox
from agents.workspace import copy_files, remove_tree

RELEASE_LIMITS = Limits(
    memory_bytes=512 * 1024 * 1024, cpu_seconds=24 * 3600, processes=32, open_files=256, file_bytes=16 * 1024 * 1024
)
"""A service runs for long: CPU time is capped per day of running, memory and processes tighter than for tests."""
LAUNCHER = Path(__file__).with_name("release_launcher.py")
LAUNCHER_FILE = "quantum_launcher.py"
SOCKET_FILE = "service.sock"
MAX_REQUEST_BYTES = 1024 * 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
UPSTREAM_SECONDS = 30.0
RELEASE_HEADER = "Quantum-Release"
ORIGIN_HEADER = "Quantum-Origin"
FORWARDED_HEADERS = ("Content-Type", "Accept")


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection over the Unix socket at ``path`` (ours: in a directory the sandbox does not see)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Service:
    """The released service, running its own code in the sandbox on the socket this host hands it."""

    def __init__(self, root: Path, artifact: Path, module: str, socket_dir: Path, log: Path) -> None:
        self.root = root
        self.artifact = artifact
        self.module = module
        self.socket_path = socket_dir / SOCKET_FILE
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.cgroup = PidsCgroup(RELEASE_LIMITS.processes)

    def start(self) -> None:
        remove_tree(self.root)
        self.root.mkdir(parents=True)
        copy_files(self.artifact / "src", self.root / "src")
        shutil.copyfile(LAUNCHER, self.root / LAUNCHER_FILE)
        self.socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(SOCKET_FILE)  # relative to the host's working directory, the socket's (paths are short)
            listener.listen(64)
            sandbox = Sandbox(limits=RELEASE_LIMITS)
            inside = sandbox.workdir(self.root)
            argv = [
                sys.executable,
                f"{inside}/{LAUNCHER_FILE}",
                "--fd",
                str(listener.fileno()),
                "--module",
                self.module,
            ]
            env = {"PYTHONPATH": f"{inside}/src", "PYTHONUNBUFFERED": "1"}
            self.cgroup.create()
            command = [*GROUP_GUARD, *self.cgroup.wrap(sandbox.command(argv, workspace=self.root, env=env))]
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(  # noqa: S603 - the sandbox's command line, built by Sandbox
                    command,
                    pass_fds=(listener.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.root,
                    env={"PATH": SANDBOX_PATH},
                    start_new_session=True,  # the guard kills its own group, never this host's
                    preexec_fn=die_with_parent(signal.SIGTERM),  # the guard's: it takes the whole group with it
                )
        finally:
            listener.close()  # the sandbox holds it now; the host only connects

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            signal_group(self.proc.pid, signal.SIGKILL)  # the guard, bwrap and the sandbox's init
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.cgroup.destroy()  # and whatever escaped it
        self.socket_path.unlink(missing_ok=True)


def build_server(
    release: str, host: str, port: int, *, kind: str = "library", socket_path: Path | None = None, wheel: str = ""
) -> ThreadingHTTPServer:
    """The host's HTTP server: a bounded forwarding proxy to the service, or the library's own answers."""
    started = time.time()
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def metrics() -> str:
        lines = [
            "# HELP quantum_release_up Whether the release is serving.",
            "# TYPE quantum_release_up gauge",
            f'quantum_release_up{{release="{release}",kind="{kind}"}} 1',
            "# HELP quantum_release_start_time_seconds When the release host started.",
            "# TYPE quantum_release_start_time_seconds gauge",
            f"quantum_release_start_time_seconds {started}",
            "# HELP quantum_release_requests_total Requests answered, by status code.",
            "# TYPE quantum_release_requests_total counter",
        ]
        with lock:
            lines += [f'quantum_release_requests_total{{code="{c}"}} {n}' for c, n in sorted(codes.items())]
        return "\n".join(lines) + "\n"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def _send(self, status: int, body: bytes, content_type: str, origin: str = "host") -> None:
            with lock:
                codes[str(status)] = codes.get(str(status), 0) + 1
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header(RELEASE_HEADER, release)
            self.send_header(ORIGIN_HEADER, origin)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, value: Any) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _handle(self) -> None:
            if self.command == "GET" and self.path == "/metrics":
                self._send(HTTPStatus.OK, metrics().encode(), "text/plain; version=0.0.4")
            elif socket_path is not None:
                self._forward(socket_path)
            elif self.command == "GET" and self.path == "/healthz":
                self._json(HTTPStatus.OK, {"status": "ok", "release": release, "kind": kind, "wheel": wheel})
            elif self.command == "GET" and self.path == "/files":
                self._json(HTTPStatus.OK, {"release": release, "files": [wheel]})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle  # noqa: N815

        def _forward(self, path: Path) -> None:
            if "Transfer-Encoding" in self.headers:
                self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "send a Content-Length"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_REQUEST_BYTES:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "the body is too large"})
                return
            body = self.rfile.read(length) if length else None
            headers = {name: self.headers[name] for name in FORWARDED_HEADERS if self.headers.get(name)}
            connection = UnixHTTPConnection(path.name, UPSTREAM_SECONDS)  # in the working directory
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read(MAX_RESPONSE_BYTES + 1)
                status, content_type = response.status, response.getheader("Content-Type") or ""
            except (OSError, http.client.HTTPException) as err:
                self._json(HTTPStatus.BAD_GATEWAY, {"error": f"the service did not answer: {type(err).__name__}"})
                return
            finally:
                connection.close()
            if len(data) > MAX_RESPONSE_BYTES:
                self._json(HTTPStatus.BAD_GATEWAY, {"error": "the service answered more than the host forwards"})
                return
            if not 100 <= status <= 599:
                self._json(HTTPStatus.BAD_GATEWAY, {"error": "the service answered with an invalid status"})
                return
            # the service's words are hostile: one header of it, printable and bounded
            content_type = "".join(ch for ch in content_type[:200] if ch.isprintable()) or "application/octet-stream"
            self._send(status, data, content_type, origin="service")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["service", "library"], default="library")
    parser.add_argument("--root", type=Path, required=True, help="The release directory (rebuilt at each start).")
    parser.add_argument("--artifact", type=Path, help="The release's artifact: src/ and, for a library, dist/.")
    parser.add_argument("--module", default="")
    parser.add_argument("--release", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="Where to write the port actually bound.")
    parser.add_argument("--socket-dir", type=Path, help="A directory of the host's own for the service's socket.")
    args = parser.parse_args(argv)
    service: Service | None = None
    exit_code = 0
    if args.kind == "service":
        if not (args.artifact and args.module and args.socket_dir):
            parser.error("a service needs --artifact, --module and --socket-dir")
        log = args.root.parent / "service.log"
        service = Service(
            args.root.absolute(), args.artifact.absolute(), args.module, args.socket_dir.absolute(), log.absolute()
        )
        # the host works in its socket's directory: a Unix socket's path is bounded (108 bytes), the name is short
        args.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chdir(args.socket_dir)
    wheels = sorted(p.name for p in (args.artifact / "dist").glob("*.whl")) if args.artifact else []
    server = build_server(
        args.release,
        args.host,
        args.port,
        kind=args.kind,
        socket_path=service.socket_path if service else None,
        wheel=wheels[0] if wheels else "",
    )
    stopping = threading.Event()

    def stop(*_: Any) -> None:
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if service is not None:
            service.start()

            def watch() -> None:
                nonlocal exit_code
                assert service is not None and service.proc is not None
                code = service.proc.wait()
                if not stopping.is_set():
                    print(f"the service exited with status {code}", file=sys.stderr, flush=True)
                    exit_code = 1
                    stop()

            threading.Thread(target=watch, daemon=True).start()
        if args.port_file:
            tmp = args.port_file.with_suffix(".tmp")
            tmp.write_text(str(server.server_address[1]))
            tmp.replace(args.port_file)
        server.serve_forever()
    finally:
        server.server_close()
        if service is not None:
            service.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
