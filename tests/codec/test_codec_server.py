"""``quantum codec-server``: Temporal's remote codec protocol over real HTTP, its token, CORS and bounds."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

from quantum.cli.codec import MAX_BODY_BYTES, CodecHTTPServer
from quantum.cli.codec_connections import ConnectionLimits
from quantum.codec import ENCODING, EncryptionCodec, Keyring
from tests.cli.support import QUANTUM, one_line_error
from tests.conftest import free_port

from .support import keys_json, new_key

TOKEN = "codec-token-0123456789abcdef"
UI = "http://localhost:8233"
TEMPORAL = Path(sys.executable).parent / "temporal"
SECRET = {"prompt": "a slugify helper", "comment": "ship it after the audit"}


@pytest.fixture
def codec() -> EncryptionCodec:
    return EncryptionCodec(Keyring.from_json(json.dumps({"k1": new_key()})))


@contextlib.contextmanager
def serving(codec: EncryptionCodec, token: str | None, **options: Any) -> Iterator[CodecHTTPServer]:
    with CodecHTTPServer(("127.0.0.1", 0), codec=codec, token=token, origins=[UI], **options) as served:
        thread = threading.Thread(target=served.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        yield served
        served.shutdown()
        thread.join(10)


@pytest.fixture
def server(codec: EncryptionCodec) -> Iterator[CodecHTTPServer]:
    with serving(codec, TOKEN) as served:
        yield served


def call(
    server: CodecHTTPServer | int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request; the status, the headers (lower-case names) and the JSON answer (None for an empty body)."""
    port = server if isinstance(server, int) else server.server_address[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data) if data else None
    finally:
        connection.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def clear_payloads(*values: object) -> dict[str, Any]:
    """Payloads as the Web UI and the ``temporal`` CLI send them: the protobuf JSON form."""
    payloads = pydantic_data_converter.payload_converter.to_payloads(list(values))
    return {"payloads": [json_format.MessageToDict(payload) for payload in payloads]}


def values_of(answer: dict[str, Any]) -> list[object]:
    payloads = [json_format.ParseDict(payload, Payload()) for payload in answer["payloads"]]
    return list(pydantic_data_converter.payload_converter.from_payloads(payloads))


def test_encode_then_decode_round_trips_over_http(server: CodecHTTPServer, codec: EncryptionCodec) -> None:
    status, headers, encoded = call(
        server, "POST", "/encode", json.dumps(clear_payloads(SECRET, 42)).encode(), bearer()
    )
    assert status == 200 and headers["content-type"] == "application/json"
    assert len(encoded["payloads"]) == 2
    for payload in encoded["payloads"]:
        parsed = json_format.ParseDict(payload, Payload())
        assert parsed.metadata["encoding"] == ENCODING
        assert b"slugify" not in parsed.data
    # what the server encrypted is what the worker's codec reads
    stored = [json_format.ParseDict(payload, Payload()) for payload in encoded["payloads"]]
    assert pydantic_data_converter.payload_converter.from_payloads([codec.decrypt(p) for p in stored]) == [SECRET, 42]

    status, _, decoded = call(server, "POST", "/decode", json.dumps(encoded).encode(), bearer())
    assert status == 200
    assert values_of(decoded) == [SECRET, 42]


def test_decode_answers_behind_a_path_prefix_and_passes_clear_payloads_through(server: CodecHTTPServer) -> None:
    status, _, answer = call(server, "POST", "/codec/decode", json.dumps(clear_payloads(SECRET)).encode(), bearer())
    assert status == 200 and values_of(answer) == [SECRET]
    status, _, answer = call(server, "POST", "/decode", b'{"payloads": []}', bearer())
    assert status == 200 and answer == {"payloads": []}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abc"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
    ids=["none", "wrong", "longer", "other-scheme", "no-scheme"],
)
def test_without_the_token_nothing_is_decoded(server: CodecHTTPServer, headers: dict[str, str]) -> None:
    encoded = call(server, "POST", "/encode", json.dumps(clear_payloads(SECRET)).encode(), bearer())[2]
    for path, body in (("/decode", encoded), ("/encode", clear_payloads(SECRET))):
        status, answer_headers, answer = call(server, "POST", path, json.dumps(body).encode(), headers)
        assert status == 401
        assert answer_headers["www-authenticate"].startswith("Bearer")
        assert "slugify" not in json.dumps(answer) and "payloads" not in answer


def test_the_cors_preflight_is_answered_for_the_web_ui_only(server: CodecHTTPServer) -> None:
    asked = {"Origin": UI, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    status, headers, _ = call(server, "OPTIONS", "/decode", headers=asked)
    assert status == 204
    assert headers["access-control-allow-origin"] == UI
    allowed = {name.strip().lower() for name in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-namespace"} <= allowed
    assert "POST" in headers["access-control-allow-methods"]

    for origin in ("http://evil.example:8233", "http://localhost:8234", "null"):
        status, headers, _ = call(server, "OPTIONS", "/decode", headers={**asked, "Origin": origin})
        assert status == 403
        assert "access-control-allow-origin" not in headers
    status, headers, _ = call(server, "OPTIONS", "/decode", headers={"Access-Control-Request-Method": "POST"})
    assert status == 403 and "access-control-allow-origin" not in headers

    body = json.dumps(clear_payloads(SECRET)).encode()
    _, headers, _ = call(server, "POST", "/decode", body, {**bearer(), "Origin": UI, "X-Namespace": "default"})
    assert headers["access-control-allow-origin"] == UI


def test_a_page_of_another_origin_is_refused_with_or_without_a_token(codec: EncryptionCodec) -> None:
    """Browsers send the Origin of every POST: a page of another site, or one reaching the server by DNS rebinding
    (same-origin to the browser, under the attacker's name), reads no payload, even where no token is needed."""
    encoded = json.dumps(
        {
            "payloads": [
                json_format.MessageToDict(codec.encrypt(clear))
                for clear in pydantic_data_converter.payload_converter.to_payloads([SECRET])
            ]
        }
    ).encode()
    for token, headers in ((TOKEN, bearer()), (None, {"Content-Type": "text/plain"})):
        with serving(codec, token) as server:
            assert call(server, "POST", "/decode", encoded, {**headers, "Origin": UI})[0] == 200
            for origin in ("http://evil.example", "http://rebound.example:8081", "null"):
                status, answer_headers, answer = call(server, "POST", "/decode", encoded, {**headers, "Origin": origin})
                assert status == 403
                assert "access-control-allow-origin" not in answer_headers and "payloads" not in answer


def test_an_oversized_body_is_refused_with_413(server: CodecHTTPServer) -> None:
    payload = {"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "A" * (MAX_BODY_BYTES + 1024)}
    body = json.dumps({"payloads": [payload]}).encode()
    status, _, answer = call(server, "POST", "/decode", body, bearer())  # the whole body sent: the 413 still arrives
    assert status == 413
    assert str(MAX_BODY_BYTES) in answer["error"]
    assert call(server, "POST", "/decode", b'{"payloads": []}', bearer())[0] == 200  # and the server serves on


def test_a_body_without_a_length_is_refused(server: CodecHTTPServer) -> None:
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
        sock.sendall(
            b"POST /decode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        answer = sock.makefile("rb").readline()
    assert answer.startswith(b"HTTP/1.0 411")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "the body is not JSON"),
        (b"\xff\xfe\x00", "the body is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the body is not JSON"),
        (b'{"payload": []}', 'the body is not JSON {"payloads": [...]}'),
        (b'{"payloads": {}}', 'the body is not JSON {"payloads": [...]}'),
        (b'{"payloads": [{"data": "not base64!"}]}', "not temporal.api.common.v1.Payload in protobuf JSON"),
        (b'{"payloads": [{"colour": "blue"}]}', "not temporal.api.common.v1.Payload in protobuf JSON"),
    ],
    ids=["syntax", "not-utf8", "deep", "no-payloads", "payloads-not-a-list", "bad-base64", "unknown-field"],
)
def test_a_malformed_body_is_refused_with_400(server: CodecHTTPServer, body: bytes, problem: str) -> None:
    status, _, answer = call(server, "POST", "/decode", body, bearer())
    assert status == 400
    assert problem in answer["error"]


def raw_exchange(server: CodecHTTPServer, request: bytes, *, timeout: float = 15) -> tuple[int, Any]:
    """Send ``request`` as written (bytes no client library would send) and read the answer: status and JSON."""
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        return response.status, json.loads(data) if data else None


def post_head(length: bytes, *extra: bytes) -> bytes:
    """The head of a decode request with the token and this ``Content-Length``."""
    lines = [b"POST /decode HTTP/1.1", b"Host: x", b"Authorization: Bearer " + TOKEN.encode()]
    return b"\r\n".join([*lines, b"Content-Length: " + length, *extra]) + b"\r\n\r\n"


@pytest.mark.parametrize(
    "length",
    [b"\xb2", b"\xb9\xb2", b"-1", b"1e3", b"0x10", b"12345678901", b"+2", b"2 2"],
    ids=["superscript-two", "superscripts", "negative", "exponent", "hex", "eleven-digits", "plus", "two-numbers"],
)
def test_a_content_length_not_in_ascii_digits_is_refused_with_400_and_the_server_serves_on(
    server: CodecHTTPServer, length: bytes
) -> None:
    """``²`` passes ``str.isdigit`` and fails ``int``: it once crashed the handler and answered nothing."""
    status, answer = raw_exchange(server, post_head(length) + b"{}")
    assert status == 400
    assert "Content-Length" in answer["error"] and "ASCII digits" in answer["error"]
    assert call(server, "POST", "/decode", b'{"payloads": []}', bearer())[0] == 200


def test_two_content_lengths_are_refused(server: CodecHTTPServer) -> None:
    status, answer = raw_exchange(server, post_head(b"2", b"Content-Length: 2") + b"{}")
    assert status == 400 and "Content-Length" in answer["error"]


@pytest.mark.parametrize("body", [b"{}", b'{"payloads": []}', b'{"payloads": null}'], ids=["empty", "list", "null"])
@pytest.mark.parametrize("path", ["/encode", "/decode"])
def test_no_payloads_in_protobuf_json_are_an_empty_list(server: CodecHTTPServer, path: str, body: bytes) -> None:
    """Protobuf JSON leaves an empty repeated field out: an empty ``Payloads`` is ``{}``, which the stock
    ``temporal`` CLI sends for a query without arguments."""
    status, _, answer = call(server, "POST", path, body, bearer())
    assert (status, answer) == (200, {"payloads": []})


def test_the_temporal_cli_queries_through_the_codec_server(server: CodecHTTPServer, temporal_address: str) -> None:
    """``temporal workflow query`` first encodes its (no) arguments: ``POST /encode`` with ``{}``. Refused, the
    query never reached Temporal; taken, Temporal answers it (here: no such run)."""
    workflow_id = f"no-such-run-{uuid.uuid4()}"
    done = subprocess.run(
        [str(TEMPORAL), "workflow", "query", "--workflow-id", workflow_id, "--name", "status"]
        + ["--address", temporal_address, "--codec-endpoint", server.url, "--codec-auth", f"Bearer {TOKEN}"]
        + ["--command-timeout", "20s"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"workflow not found for ID: {workflow_id}" in done.stderr, done.stderr


HALF_SENT = 300


def test_half_sent_requests_hold_no_thread_and_others_are_answered_meanwhile(server: CodecHTTPServer) -> None:
    """Each connection once had a thread: 300 requests announcing a body that never comes held 300 threads."""
    before = threading.active_count()
    hanging = []
    try:
        for _ in range(HALF_SENT):
            sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)
            hanging.append(sock)
            sock.sendall(post_head(b"1000000"))
        time.sleep(0.5)
        assert threading.active_count() - before <= 2
        body = json.dumps(clear_payloads(SECRET)).encode()
        status, _, answer = call(server, "POST", "/encode", body, bearer())
        assert status == 200 and len(answer["payloads"]) == 1
        assert threading.active_count() - before <= server.limits.workers + 1
        for sock in hanging:  # still waiting for their bodies: nothing was answered or closed
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in hanging:
            sock.close()


@pytest.mark.parametrize(
    "sent",
    [b"POST /decode HTTP/1.1\r\nHost: x\r\n", post_head(b"100") + b'{"payloads": ['],
    ids=["head", "body"],
)
def test_a_request_that_stops_arriving_is_answered_408_within_seconds(server: CodecHTTPServer, sent: bytes) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=20) as sock:
        sock.sendall(sent)
        answer = sock.makefile("rb").read()
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.0 408"), answer[:200]
    assert server.limits.idle_seconds - 0.5 <= waited <= server.limits.idle_seconds + 3


def test_a_body_arriving_slowly_but_steadily_is_answered(server: CodecHTTPServer) -> None:
    body = json.dumps(clear_payloads(SECRET)).encode()
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=20) as sock:
        sock.sendall(post_head(str(len(body)).encode()))
        for start in range(0, len(body), len(body) // 3 + 1):
            time.sleep(0.3)
            sock.sendall(body[start : start + len(body) // 3 + 1])
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        assert values_of(json.loads(response.read())) == [SECRET]


def test_beyond_its_connections_the_server_answers_503_at_once_then_serves_again(codec: EncryptionCodec) -> None:
    with serving(codec, TOKEN, limits=ConnectionLimits(max_connections=3)) as server:
        address = ("127.0.0.1", server.server_address[1])
        hanging = [socket.create_connection(address, timeout=10) for _ in range(3)]
        try:
            deadline = time.monotonic() + 5
            while server.reception.held < 3:
                assert time.monotonic() < deadline, "the connections were never accepted"
                time.sleep(0.02)
            started = time.monotonic()
            with socket.create_connection(address, timeout=10) as sock:  # answered before it sends anything
                status_line, _, body = sock.makefile("rb").read().partition(b"\r\n\r\n")
            assert status_line.startswith(b"HTTP/1.0 503") and b"too many connections" in body
            assert time.monotonic() - started < 2
        finally:
            for sock in hanging:
                sock.close()
        deadline = time.monotonic() + 5
        while not served_ok(server):
            assert time.monotonic() < deadline, "the closed connections were never released"
            time.sleep(0.1)


def served_ok(server: CodecHTTPServer) -> bool:
    """Whether a decode is answered 200 (a 503 sent while the request was still going out may reset it)."""
    try:
        return call(server, "POST", "/decode", b"{}", bearer())[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def test_a_payload_under_an_unknown_key_is_refused_naming_its_id(server: CodecHTTPServer) -> None:
    other = EncryptionCodec(Keyring.from_json(json.dumps({"retired-2024": new_key()})))
    stored = other.encrypt(pydantic_data_converter.payload_converter.to_payloads([SECRET])[0])
    body = json.dumps({"payloads": [json_format.MessageToDict(stored)]}).encode()
    status, _, answer = call(server, "POST", "/decode", body, bearer())
    assert status == 400
    assert "'retired-2024'" in answer["error"] and "does not hold" in answer["error"]


def test_other_paths_are_not_found(server: CodecHTTPServer) -> None:
    assert call(server, "POST", "/", b"{}", bearer())[0] == 404
    assert call(server, "POST", "/decoder", b"{}", bearer())[0] == 404
    assert call(server, "OPTIONS", "/", headers={"Origin": UI})[0] == 404


def command_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env.update(values)
    return env


def run_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUANTUM), "codec-server", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def wait_until_listening(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the codec server did not listen"
            time.sleep(0.1)


def test_the_command_serves_with_the_token_of_the_settings() -> None:
    text, _ = keys_json("k1")
    port = free_port()
    env = command_env(QUANTUM_CODEC_KEYS=text, QUANTUM_CODEC_SERVER_TOKEN=TOKEN)
    args = [str(QUANTUM), "codec-server", "--port", str(port), "--cors-origin", "http://127.0.0.1:9233"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_listening(proc, port)
        status, _, encoded = call(port, "POST", "/encode", json.dumps(clear_payloads(SECRET)).encode(), bearer())
        assert status == 200
        assert values_of(call(port, "POST", "/decode", json.dumps(encoded).encode(), bearer())[2]) == [SECRET]
        assert call(port, "POST", "/decode", json.dumps(encoded).encode(), bearer("wrong-token-0123456789"))[0] == 401
        preflight = {"Origin": "http://127.0.0.1:9233", "Access-Control-Request-Method": "POST"}
        assert call(port, "OPTIONS", "/decode", headers=preflight)[0] == 204
        assert call(port, "OPTIONS", "/decode", headers={**preflight, "Origin": UI})[0] == 403
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert f"codec server on http://127.0.0.1:{port}" in out
    assert TOKEN not in out + err and text not in out + err


def test_the_command_refuses_to_serve_without_a_token() -> None:
    text, _ = keys_json("k1")
    done = run_command(command_env(QUANTUM_CODEC_KEYS=text), "--port", str(free_port()))
    assert done.returncode == 1
    assert done.stderr.startswith("error: QUANTUM_CODEC_SERVER_TOKEN is not set") and "--no-auth" in done.stderr
    short = run_command(command_env(QUANTUM_CODEC_KEYS=text, QUANTUM_CODEC_SERVER_TOKEN="short"))
    assert short.returncode == 1 and "at least 16" in short.stderr


def test_the_command_serves_without_a_token_only_on_loopback() -> None:
    text, _ = keys_json("k1")
    env = command_env(QUANTUM_CODEC_KEYS=text)
    refused = run_command(env, "--no-auth", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2 and "only on a loopback host" in refused.stderr

    port = free_port()
    args = [str(QUANTUM), "codec-server", "--no-auth", "--port", str(port)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_listening(proc, port)
        body = json.dumps(clear_payloads(SECRET)).encode()
        assert call(port, "POST", "/encode", body, {"Content-Type": "application/json"})[0] == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_the_command_refuses_without_keys() -> None:
    done = run_command(command_env(QUANTUM_CODEC_SERVER_TOKEN=TOKEN))
    assert done.returncode == 1 and "no codec keys to serve" in done.stderr


def test_keys_that_cannot_be_used_stop_any_command_in_one_line() -> None:
    """The keys are read when a command connects: their problem is said as theirs, not as Temporal's address."""
    env = command_env(QUANTUM_CODEC_KEYS=json.dumps({"k1": "AAAA"}), QUANTUM_TEMPORAL_ADDRESS="127.0.0.1:1")
    done = subprocess.run(
        [str(QUANTUM), "pipeline", "list"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert one_line_error(done) == "error: QUANTUM_CODEC_KEYS: key 'k1' is 3 bytes long; AES-256 takes 32"
