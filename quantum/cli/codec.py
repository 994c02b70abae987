"""``quantum codec-server``: Temporal's remote codec protocol, for the Web UI and ``temporal --codec-endpoint``.

With codec keys set, Temporal holds only ciphertext, and so do the Web UI and the stock ``temporal`` CLI, which
cannot run Python codecs. They send the payloads they show to a codec server (``POST <endpoint>/decode``, and
``/encode`` for what they send, such as a signal's input), with a JSON body ``{"payloads": [...]}`` of payloads in
the protobuf JSON form, and expect the same shape back. Whoever reaches this server reads every payload, so it asks
for a bearer token (``QUANTUM_CODEC_SERVER_TOKEN``), listens on loopback unless told otherwise, and answers the
browser's CORS preflight only for the Web UI's origin. Its connections are bounded in number and in time
(``quantum.cli.codec_connections``): clients that never finish a request hold no thread.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import logging
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from quantum.cli.apps import app
from quantum.cli.codec_connections import MAX_BODY_BYTES, ConnectionLimits, Reception, content_length, quick_answer
from quantum.cli.connect import load_settings
from quantum.cli.errors import USAGE
from quantum.cli.output import fail, say
from quantum.codec import CodecError, EncryptionCodec
from quantum.views import plain

log = logging.getLogger(__name__)

DEFAULT_PORT = 8081
MAX_DISCARD_BYTES = 16 * 1024 * 1024
"""How much of a refused request's body is read and dropped, so that the client, still sending, gets the answer
instead of a reset connection; a larger body is cut off."""
MIN_TOKEN_CHARS = 16
ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"
"""What the Web UI sends: its access token, the JSON body's type, and the namespace the payloads come from."""


class CodecHTTPServer(HTTPServer):
    """The codec behind ``POST .../encode`` and ``POST .../decode``.

    Args:
        address: Host and port to listen on.
        codec: The codec with the keys.
        token: The bearer token every POST must carry; None serves without one (the command allows that on loopback
            only).
        origins: The browser origins (``scheme://host:port``) allowed to call it, the Web UI's.
        limits: How many connections it holds at once, with how many threads, and for how long.
    """

    request_queue_size = 128  # connections the kernel holds before they are accepted

    def __init__(
        self,
        address: tuple[str, int],
        *,
        codec: EncryptionCodec,
        token: str | None,
        origins: Iterable[str],
        limits: ConnectionLimits | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.codec = codec
        self.token = token
        self.origins = frozenset(origins)
        self.limits = limits or ConnectionLimits()
        super().__init__(address, BaseHTTPRequestHandler)  # unused: _respond makes each CodecHandler
        self._answering = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="codec-answer")
        self.reception = Reception(self._dispatch, self.limits)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://[{host}]:{port}" if self.address_family == socket.AF_INET6 else f"http://{host}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand a new connection to the reception, or answer 503 when it holds as many as it may."""
        if not self.reception.admit(request, client_address):
            quick_answer(request, HTTPStatus.SERVICE_UNAVAILABLE, "too many connections: try again shortly")

    def server_close(self) -> None:
        super().server_close()
        self.reception.stop()
        self._answering.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self, sock: socket.socket, client_address: Any, request: bytes) -> None:
        self._answering.submit(self._respond, sock, client_address, request)

    def _respond(self, sock: socket.socket, client_address: Any, request: bytes) -> None:
        """Answer one whole request on a thread of the pool, then give the connection back to the reception."""
        unread = 0
        try:
            unread = CodecHandler(sock, client_address, self, request=request).unread
        except Exception:  # a client gone mid-answer, or a bug: the connection is closed either way
            log.debug("answering %s failed", client_address, exc_info=True)
        self.reception.finished(sock, len(request), unread=unread)


class CodecHandler(BaseHTTPRequestHandler):
    """One request, read whole beforehand by the reception: ``request`` holds its bytes."""

    server: CodecHTTPServer
    server_version = "quantum-codec"
    sys_version = ""

    def __init__(self, sock: socket.socket, client_address: Any, server: CodecHTTPServer, *, request: bytes) -> None:
        self._request = request
        self.unread = 0
        """How much of a refused body is still to come: the reception reads and drops it after the answer."""
        super().__init__(sock, client_address, server)

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._request)
        self.wfile = self.connection.makefile("wb")

    def do_OPTIONS(self) -> None:  # noqa: N802 - the name http.server dispatches to
        """The browser's CORS preflight: answered for the configured origins only, and never asks for the token."""
        if self._operation() is None:
            self._refuse(HTTPStatus.NOT_FOUND, "no such endpoint: POST .../encode or .../decode")
            return
        origin = self.headers.get("Origin")
        if origin not in self.server.origins:
            self._refuse(HTTPStatus.FORBIDDEN, f"origin {origin!r} is not allowed (quantum codec-server --cors-origin)")
            return
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self._cors_headers()
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        operation = self._operation()
        if operation is None:
            self._refuse(HTTPStatus.NOT_FOUND, "no such endpoint: POST .../encode or .../decode")
            return
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.server.origins:  # a page of another site, or DNS rebinding
            self._refuse(HTTPStatus.FORBIDDEN, f"origin {origin!r} is not allowed (quantum codec-server --cors-origin)")
            return
        if not self._authorized():
            self._refuse(HTTPStatus.UNAUTHORIZED, "a valid 'Authorization: Bearer <token>' header is required")
            return
        length = self._content_length()
        if length is None:
            return
        if length > MAX_BODY_BYTES:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes")
            return
        try:
            payloads = parse_payloads(self.rfile.read(length))
            answer = [operation(payload) for payload in payloads]
        except (ValueError, CodecError) as err:  # CodecError names key ids only
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        self._answer(HTTPStatus.OK, {"payloads": [json_format.MessageToDict(payload) for payload in answer]})

    def _content_length(self) -> int | None:
        """The body's length: one ``Content-Length`` of 1 to 10 ASCII digits; None once refused otherwise."""
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "the body's Content-Length is required")
            return None
        length = content_length(values)
        if length is None:
            shown = ", ".join(repr(value)[:40] for value in values[:3])
            self._refuse(HTTPStatus.BAD_REQUEST, f"Content-Length must be one number of bytes in ASCII digits: {shown}")
        return length

    def _operation(self) -> Callable[[Payload], Payload] | None:
        """What the path asks for: ``.../encode`` or ``.../decode`` (behind any prefix a proxy adds), else None."""
        last = urlsplit(self.path).path.rstrip("/").rpartition("/")[2]
        return {"encode": self.server.codec.encrypt, "decode": self.server.codec.decrypt}.get(last)

    def _authorized(self) -> bool:
        if self.server.token is None:
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.server.token.encode())

    def _cors_headers(self) -> None:
        origin = self.headers.get("Origin")
        if origin in self.server.origins:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Vary", "Origin")

    def _answer(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="quantum-codec"')
        self._cors_headers()
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        """Answer before the body is read; what of the body (up to a bound) is still to come is read and dropped
        after the answer (:attr:`unread`), so that it reaches the client instead of a reset connection."""
        self.close_connection = True
        self._answer(status, {"error": message})
        left = min(content_length(self.headers.get_all("Content-Length") or []) or 0, MAX_DISCARD_BYTES)
        self.unread = left - len(self.rfile.read(left))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


def parse_payloads(body: bytes) -> list[Payload]:
    """The payloads of a body ``{"payloads": [...]}`` in the protobuf JSON form, where an empty list may also be
    left out: ``{}`` is how protobuf JSON writes no payloads (the ``temporal`` CLI sends it for a query without
    arguments).

    Raises:
        ValueError: The body is not such JSON; the message says what is wrong.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f'the body is not JSON {{"payloads": [...]}}: {err}') from None
    if isinstance(document, dict) and document.keys() <= {"payloads"} and document.get("payloads") is None:
        return []  # {} or {"payloads": null}: protobuf JSON's forms of no payloads
    if not isinstance(document, dict) or not isinstance(document.get("payloads"), list):
        raise ValueError('the body is not JSON {"payloads": [...]}')
    try:
        return list(json_format.ParseDict({"payloads": document["payloads"]}, Payloads()).payloads)
    except json_format.ParseError as err:
        raise ValueError(f"the payloads are not temporal.api.common.v1.Payload in protobuf JSON: {err}") from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (an address on 0.0.0.0 or a name is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_origins(origins: list[str] | None) -> list[str] | None:
    """Browser origins, ``scheme://host[:port]``, in the form browsers send them (no path, no trailing slash)."""
    checked = []
    for origin in origins or []:
        parts = urlsplit(origin.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
            raise typer.BadParameter(f"{origin!r} is not an origin such as http://localhost:8233")
        checked.append(f"{parts.scheme}://{parts.netloc}")
    return checked or None


@app.command("codec-server")
def codec_server(
    host: Annotated[str, typer.Option(help="Where to listen: loopback, unless the Web UI is elsewhere.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="The port to listen on.")] = DEFAULT_PORT,
    cors_origins: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help="A Web UI origin allowed to call from a browser (repeatable); default: the Temporal Web UI of the "
            "settings.",
            callback=check_origins,
        ),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without a token: on a loopback host only, for a local Web UI.")
    ] = False,
) -> None:
    """Decrypt and encrypt payloads for the Temporal Web UI and `temporal --codec-endpoint` (docs/security.md)."""
    if no_auth and not is_loopback(host):
        fail(f"--no-auth serves every payload in clear to whoever reaches {host}: only on a loopback host", USAGE)
    settings = load_settings()
    try:
        keyring = settings.codec_keyring()
    except CodecError as err:
        fail(str(err))
    if keyring is None:
        fail("no codec keys to serve: set QUANTUM_CODEC_KEYS or QUANTUM_CODEC_KEYS_FILE (docs/security.md)")
    token = None
    if not no_auth:
        token = settings.codec_server_token.get_secret_value().strip() if settings.codec_server_token else ""
        if not token:
            fail(
                "QUANTUM_CODEC_SERVER_TOKEN is not set: the codec server reads every payload for whoever calls it; "
                "set a token, or pass --no-auth to serve on loopback without one"
            )
        if len(token) < MIN_TOKEN_CHARS:
            fail(f"QUANTUM_CODEC_SERVER_TOKEN is {len(token)} characters long: use at least {MIN_TOKEN_CHARS}")
    origins = cors_origins or [settings.temporal_ui_url]
    try:
        server = CodecHTTPServer((host, port), codec=EncryptionCodec(keyring), token=token, origins=origins)
    except OSError as err:
        fail(f"cannot listen on {host}:{port} ({err.strerror or err})")
    with server:
        say(
            "codec server on ",
            plain(server.url, style="bold"),
            f" (current key {keyring.current!r}; ",
            "bearer token required" if token else "no token",
            "; browser origins: ",
            plain(", ".join(origins)),
            "); Ctrl-C stops it",
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            say("stopped")
