"""Credentials with the payload codec off: every credential the product holds is a canary, the real processes use
them for real, and none is found in what a reader of the stores, the logs or the bus sees.

``quantum worker`` and ``quantum bridge`` run as a cluster runs them, from ``QUANTUM_*`` variables holding:

- the model's API key (a local server speaking the OpenAI protocol checks it on every request);
- a NATS user's ``.creds`` file (its JWT and NKey seed) for a ``nats-server`` in operator mode, which refuses a
  client without it: the worker, the bridge, QInfra and the CLI all connect with it;
- the Temporal API key and an mTLS client certificate and key: Temporal is reached through a TLS front that
  refuses a client without a certificate of the test's CA (the dev server itself speaks no TLS);
- a reviewer's Ed25519 private key, with which ``quantum review`` signs; the worker holds the public keys;
- the Qdrant API key and the codec server token (held, not used: the pattern store is local, the codec is off).

Two runs go through them: a code generation on the scripted model (requested on the bus), and a prod pipeline
(requested with ``quantum pipeline request``) whose first attempt fails with a test that prints the sandbox's
environment, is repaired by the model, passes an infra gate approved by a signed review event and a deploy gate
approved by ``quantum review``. Then every place a reader could look is searched for each credential, in the forms
it could take there (as it is, hex, base64 at each alignment, standard or URL-safe): the histories (``temporal
workflow show`` and the client's), the status views, the logs of every process, every message of every JetStream
stream, the Temporal SQLite files, the environments and command lines of every process the worker and the bridge
started, what the model was sent, and the worker's data directory. Each place is also shown to hold what it should
(a credential-shaped string planted in the prompts and review comments, or the process's own output), and each
credential's forms are found in the file or variable that holds it, so that a search that finds nothing means
something.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig

from events.envelope import new_event, subject_for
from events.models import ReviewDecision
from events.streams import DLQ_STREAM, ensure_streams
from quantum.cli.review import signed
from quantum.stack import TemporalDevServer, port_in_use
from tests.agents.openai_server import OpenAIServer
from tests.conftest import BIN, free_port, terminate
from tests.workflows.conftest import files, wait_for
from workflows.models import RunStatusView

pytestmark = [pytest.mark.workflow, pytest.mark.timeout(240)]

QUANTUM = BIN / "quantum"
TEMPORAL = BIN / "temporal"
PROJECT = "ledger"
REQUESTER = "carol"
REVIEWER = "bob"
WAITING = ("running", "awaiting_review")

CODE = '''"""Arithmetic helpers."""


def add(a: int, b: int) -> int:
    return a + b


def is_even(n: int) -> bool:
    return n % 2 == 0
'''
SUITE = (
    f"from {PROJECT} import add, is_even\n\n\n"
    "def test_add():\n    assert add(2, 3) == 5\n    assert add(-1, 1) == 0\n\n\n"
    "def test_is_even():\n    assert is_even(4) is True\n    assert is_even(3) is False\n"
)
ENV_MARK = "SANDBOX-ENVIRONMENT"
SHOW_ENVIRONMENT = (
    SUITE + "\n\ndef test_environment():\n    import os\n\n"
    "    shown = ' '.join(f'{k}={v}' for k, v in sorted(os.environ.items()))\n"
    f"    assert False, '{ENV_MARK} ' + shown\n"
)
"""The first attempt's tests: one fails with the whole environment the sandbox gives the code, which thus reaches
the run's history and the repair request sent to the model."""


# --- what is searched for, and how ---------------------------------------------------------------------------------


def encodings(value: bytes) -> set[bytes]:
    """``value`` as it is, in hex, and in base64 (standard and URL-safe) at each of the three alignments it can have
    inside a longer encoded text (only the characters that encode ``value`` alone)."""
    found = {value, value.hex().encode(), value.hex().upper().encode()}
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * shift + value)
            found.add(encoded[4 * ((shift + 2) // 3) : 4 * ((shift + len(value)) // 3)])
    return found


@dataclass(frozen=True)
class Secret:
    """One credential: its name and the forms in which it is held (each then searched in all its encodings)."""

    name: str
    forms: tuple[bytes, ...]
    holder: bytes = b""
    """The file content or variable value that holds it: its forms must be found there."""
    variable: bool = False
    """Held in a ``QUANTUM_*`` variable (else in a file the variable names)."""

    @property
    def needles(self) -> set[bytes]:
        return {needle for form in self.forms for needle in encodings(form)}

    def hits(self, haystack: bytes) -> int:
        return sum(haystack.count(needle) for needle in self.needles)


def canary(kind: str) -> str:
    """A unique credential-shaped string: letters, digits and '-' only, so JSON leaves it as it is."""
    return f"canary-{kind}-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"


def plain_secret(name: str, value: str) -> Secret:
    return Secret(name, (value.encode(),), value.encode(), variable=True)


def pem_lines(pem: bytes) -> tuple[bytes, ...]:
    """The base64 lines of a PEM body (the full ones: a short last line may hold public parts only)."""
    body = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return tuple(line for line in body if len(line) == 64) or tuple(body)


# --- NATS in operator mode: a client connects with a user's .creds file or not at all ------------------------------


JWT_HEADER = json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _nkey(prefix: int) -> tuple[bytes, nkeys.KeyPair, bytes]:
    """A seed (as written in a .creds file), its key pair, and the raw private bytes it encodes."""
    raw = os.urandom(32)
    seed = nkeys.encode_seed(raw, prefix)
    return seed, nkeys.from_seed(bytearray(seed)), raw


def _jwt(issuer: nkeys.KeyPair, subject: nkeys.KeyPair, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) for ``subject`` signed by ``issuer``, as ``nsc`` would write it."""
    body: dict[str, Any] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject.public_key.decode(),
        "nats": {**claims, "version": 2},
    }
    body["jti"] = base64.b32encode(hashlib.new("sha512_256", json.dumps(body).encode()).digest()).decode().rstrip("=")
    signing_input = f"{_b64url(JWT_HEADER)}.{_b64url(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64url(issuer.sign(signing_input.encode()))}"


@dataclass
class SecuredNats:
    url: str
    creds: Path
    seed: Secret
    jwt: Secret
    log: Path


@contextlib.contextmanager
def secured_nats(directory: Path) -> Iterator[SecuredNats]:
    """``nats-server -js`` trusting one operator, with one account (JetStream on) and one user whose ``.creds`` file
    is written; a client without it is refused."""
    directory.mkdir()
    _, operator, _ = _nkey(nkeys.PREFIX_BYTE_OPERATOR)
    _, account, _ = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    _, system, _ = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, user, user_raw = _nkey(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1}
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    user_jwt = _jwt(
        account, user, "quantum", {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    )
    creds = directory / "quantum.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    port = free_port()
    config = directory / "nats.conf"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"operator: {_jwt(operator, operator, 'tests', {'type': 'operator'})}\n"
        f"system_account: {system.public_key.decode()}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f"  {account.public_key.decode()}: "
        f"{_jwt(operator, account, 'quantum', {'type': 'account', 'limits': {**unlimited, **jetstream}})}\n"
        f"  {system.public_key.decode()}: {_jwt(operator, system, 'SYS', {'type': 'account', 'limits': unlimited})}\n"
        "}\n"
        f'jetstream {{\n  store_dir: "{directory / "store"}"\n}}\n'
    )
    log = directory / "nats-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "nats-server"), "-c", str(config)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while not port_in_use("127.0.0.1", port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield SecuredNats(
            url=f"nats://127.0.0.1:{port}",
            creds=creds,
            seed=Secret("NATS user's NKey seed (QUANTUM_NATS_CREDS file)", (user_seed, user_raw), creds.read_bytes()),
            jwt=Secret("NATS user's JWT (QUANTUM_NATS_CREDS file)", (user_jwt.encode(),), creds.read_bytes()),
            log=log,
        )
    finally:
        terminate(proc)


# --- Temporal behind mutual TLS --------------------------------------------------------------------------------------


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey], usage: str
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=4))
        .add_extension(x509.BasicConstraints(ca=usage == "ca", path_length=None), critical=True)
    )
    if usage == "server":
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif usage == "client":
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


@dataclass
class MutualTLS:
    ca: Path
    client_cert: Path
    client_key: Path
    key: Secret
    server: ssl.SSLContext


def mutual_tls(directory: Path) -> MutualTLS:
    """A CA, a server certificate for 127.0.0.1 and a client certificate and key (the key is the canary)."""
    directory.mkdir()
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("quantum-tests-ca", ca_key, ("quantum-tests-ca", ca_key), "ca")
    paths = {name: directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
    paths["ca.pem"].write_bytes(ca.public_bytes(Encoding.PEM))
    server = _certificate("localhost", server_key, ("quantum-tests-ca", ca_key), "server")
    paths["server.pem"].write_bytes(server.public_bytes(Encoding.PEM))
    paths["server.key"].write_bytes(_pem(server_key))
    client = _certificate("quantum-worker", client_key, ("quantum-tests-ca", ca_key), "client")
    paths["client.pem"].write_bytes(client.public_bytes(Encoding.PEM))
    paths["client.key"].write_bytes(_pem(client_key))
    paths["client.key"].chmod(0o600)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(paths["ca.pem"]))
    context.load_cert_chain(paths["server.pem"], paths["server.key"])
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    scalar = client_key.private_numbers().private_value.to_bytes(32, "big")
    der = client_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    forms = (scalar, der, *pem_lines(_pem(client_key)))
    key = Secret("Temporal mTLS client key (QUANTUM_TEMPORAL_TLS_KEY file)", forms, paths["client.key"].read_bytes())
    return MutualTLS(paths["ca.pem"], paths["client.pem"], paths["client.key"], key, context)


class TLSFront:
    """Terminates TLS for the dev server, requiring a client certificate of the test CA (as a Temporal cluster with
    mTLS does), in a thread of its own so that nothing the test blocks on stalls the worker's traffic."""

    def __init__(self, upstream_port: int, context: ssl.SSLContext) -> None:
        self.upstream_port = upstream_port
        self.context = context
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tls-front", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=10)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._loop.set_exception_handler(lambda loop, context: None)  # refused handshakes, connections torn down
        self._ready.set()
        self._loop.run_forever()
        server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def __enter__(self) -> TLSFront:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


# --- the environments of the processes the worker and the bridge start ---------------------------------------------


class ChildEnvironments(threading.Thread):
    """Samples, every 10 ms, the environment and command line of every descendant of ``roots`` (the sandbox, bwrap,
    pytest, bandit, promtool, the release host...). A child forked but not yet exec'd still shows its parent's
    memory, and so its parent's environment: such a sample (same command line and environment as its parent) is
    skipped. Sampling can miss a child that lives less than the interval; the ones that matter live longer."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        super().__init__(name="child-environments", daemon=True)
        self.roots = roots
        self.seen: dict[tuple[int, bytes], bytes] = {}
        self._parent: dict[int, int] = {}
        self._stop_event = threading.Event()

    @staticmethod
    def _read(pid: int, name: str) -> bytes | None:
        try:
            return Path(f"/proc/{pid}/{name}").read_bytes()
        except OSError:
            return None

    def sample(self) -> None:
        pids = {int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()}
        for gone in self._parent.keys() - pids:
            del self._parent[gone]
        for pid in pids - self._parent.keys():  # a process keeps its parent until that one dies
            stat = self._read(pid, "stat")
            if stat is not None:
                self._parent[pid] = int(stat.rsplit(b")", 1)[1].split()[1])
        children: dict[int, list[int]] = {}
        for pid, parent in self._parent.items():
            children.setdefault(parent, []).append(pid)
        todo = list(self.roots())
        while todo:
            parent = todo.pop()
            for pid in children.get(parent, []):
                todo.append(pid)
                cmdline, environ = self._read(pid, "cmdline"), self._read(pid, "environ")
                if not cmdline or environ is None:
                    continue
                if (cmdline, environ) == (self._read(parent, "cmdline"), self._read(parent, "environ")):
                    continue  # forked, not yet exec'd
                self.seen.setdefault((pid, cmdline), environ)

    def run(self) -> None:
        while not self._stop_event.wait(0.01):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    @property
    def programs(self) -> list[str]:
        """What ran: each program's name, and the module of ``python -m``."""
        names = set()
        for _, cmdline in self.seen:
            argv = [arg.decode(errors="replace") for arg in cmdline.split(b"\0")]
            python = Path(argv[0]).name.startswith("python") and "-m" in argv[:-1]
            module = argv[argv.index("-m") + 1] if python else ""
            names.add(Path(argv[0]).name + (f" -m {module}" if module else ""))
        return sorted(names)

    @property
    def blob(self) -> bytes:
        return b"\n".join(cmdline + b"\n" + environ for (_, cmdline), environ in self.seen.items())


# --- the product, run as a cluster runs it ---------------------------------------------------------------------------


@dataclass
class Quantum:
    """A ``quantum`` command run by the tests, with the credentials in its environment."""

    env: dict[str, str]
    cwd: Path
    logs: dict[str, Path] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.cwd / f"{name}.log"
        env = {**self.env, "QUANTUM_METRICS_PORT": str(free_port())}
        with log.open("ab") as out:
            proc = subprocess.Popen([str(QUANTUM), *args], env=env, cwd=self.cwd, stdout=out, stderr=out)
        self.logs[name], self.procs[name] = log, proc
        return proc

    async def wait_for_line(self, name: str, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.logs[name].read_text(errors="replace"):
            assert self.procs[name].poll() is None, self.logs[name].read_text(errors="replace")
            assert time.monotonic() < deadline, self.logs[name].read_text(errors="replace")
            await asyncio.sleep(0.1)

    async def run(self, name: str, *args: str) -> str:
        """Run a command to its end; its output is kept as a log of its own."""
        proc = await asyncio.create_subprocess_exec(
            str(QUANTUM), *args, env=self.env, cwd=self.cwd, stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        self.logs[name] = self.cwd / f"{name}.log"
        self.logs[name].write_bytes(out)
        assert proc.returncode == 0, out.decode(errors="replace")
        return out.decode(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@dataclass
class Exposure:
    """What was searched (each place's bytes), for which credentials, and the facts that show they were used."""

    secrets: list[Secret]
    planted: Secret
    places: dict[str, bytes]
    model_requests: list[dict[str, Any]]
    review_identities: list[str]
    worker_environ: bytes
    programs: list[str]
    refused: dict[str, str]
    statuses: dict[str, str]
    children: dict[bytes, bytes]
    """Each child's command line and environment, to name the one that holds a credential."""


async def publish(nc: NATS, event_type: str, data: dict[str, Any]) -> str:
    event = new_event(event_type, data, source="tests")
    await nc.jetstream().publish(subject_for(event_type), event.to_bytes(), headers={"Nats-Msg-Id": event.id})
    return event.id


async def temporal_show(address: str, run_id: str) -> bytes:
    argv = [str(TEMPORAL), "workflow", "show", "--workflow-id", run_id, "--address", address, "--output", "json"]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    return out


async def stream_messages(nc: NATS) -> dict[str, bytes]:
    """Every message of every stream: subject, headers and data."""
    js = nc.jetstream()
    found: dict[str, bytes] = {}
    for info in await js.streams_info():
        name, parts = info.config.name or "?", []
        for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
            try:
                msg = await js.get_msg(name, seq)
            except NotFoundError:
                continue
            headers = json.dumps(msg.headers or {}).encode()
            parts.append(b"\n".join([(msg.subject or "").encode(), headers, msg.data or b""]))
        found[name] = b"\n".join(parts)
    return found


def directory_bytes(root: Path) -> bytes:
    """Every regular file under ``root`` (links not followed)."""
    return b"".join(path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file() and not path.is_symlink())


async def refusals(nats_url: str, address: str, tls: MutualTLS) -> dict[str, str]:
    """What NATS and the TLS front say to a client without the credentials (so the credentials were needed)."""
    refused = {}
    try:
        nc = await nats.connect(nats_url, allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)
        await nc.close()
    except Exception as err:
        refused["nats without the creds file"] = str(err)
    try:
        await Client.connect(address, tls=TLSConfig(server_root_ca_cert=tls.ca.read_bytes()))
    except Exception as err:
        refused["temporal without a client certificate"] = str(err)[:120]
    return refused


@pytest.fixture(scope="module")
async def exposure(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Exposure]:
    tmp = tmp_path_factory.mktemp("credentials")
    llm_key = plain_secret("LLM API key (QUANTUM_LLM_API_KEY)", "sk-" + canary("llm"))
    temporal_key = plain_secret("Temporal API key (QUANTUM_TEMPORAL_API_KEY)", canary("temporal"))
    qdrant_key = plain_secret("Qdrant API key (QUANTUM_QDRANT_API_KEY)", canary("qdrant"))
    codec_token = plain_secret("codec server token (QUANTUM_CODEC_SERVER_TOKEN)", canary("codec-token"))
    planted = plain_secret("planted in prompts and comments (control)", "sk-" + canary("planted"))

    reviewer = Ed25519PrivateKey.generate()
    reviewer_pem = reviewer.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (tmp / "reviewer.key").write_bytes(reviewer_pem)
    (tmp / "reviewer.key").chmod(0o600)
    (tmp / "reviewers").mkdir()
    (tmp / "reviewers" / f"{REVIEWER}.pub").write_bytes(
        reviewer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    raw = reviewer.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    reviewer_key = Secret(
        "reviewer's Ed25519 private key (QUANTUM_REVIEWER_KEY_FILE)", (raw, *pem_lines(reviewer_pem)), reviewer_pem
    )
    tls = mutual_tls(tmp / "tls")
    (tmp / "work").mkdir()
    data_dir = tmp / "data"

    server = TemporalDevServer(
        host="127.0.0.1", port=free_port(), ui_port=None, headless=True, db_file=tmp / "t.db", log_file=tmp / "t.log"
    )
    await server.start()
    stack = contextlib.ExitStack()
    quantum: Quantum | None = None
    watcher: ChildEnvironments | None = None
    try:
        bus = stack.enter_context(secured_nats(tmp / "nats"))
        front = stack.enter_context(TLSFront(server.port, tls.server))
        model = stack.enter_context(OpenAIServer())
        secrets = [llm_key, temporal_key, tls.key, bus.seed, bus.jwt, reviewer_key, qdrant_key, codec_token]

        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_") and k != "OPENAI_API_KEY"}
        env.update(
            QUANTUM_DATA_DIR=str(data_dir),
            QUANTUM_TEMPORAL_ADDRESS=f"127.0.0.1:{front.port}",
            QUANTUM_TEMPORAL_API_KEY=temporal_key.holder.decode(),
            QUANTUM_TEMPORAL_TLS_CERT=str(tls.client_cert),
            QUANTUM_TEMPORAL_TLS_KEY=str(tls.client_key),
            QUANTUM_TEMPORAL_TLS_CA=str(tls.ca),
            QUANTUM_NATS_URL=bus.url,
            QUANTUM_NATS_CREDS=str(bus.creds),
            QUANTUM_LLM_BASE_URL=model.url,
            QUANTUM_LLM_MODEL="coder-1",
            QUANTUM_LLM_API_KEY=llm_key.holder.decode(),
            QUANTUM_QDRANT_API_KEY=qdrant_key.holder.decode(),
            QUANTUM_CODEC_SERVER_TOKEN=codec_token.holder.decode(),
            QUANTUM_REVIEWER_KEYS=str(tmp / "reviewers"),
            QUANTUM_REVIEWER_KEY_FILE=str(tmp / "reviewer.key"),
            QUANTUM_PROMETHEUS="false",
            QUANTUM_LOG_LEVEL="DEBUG",
            COLUMNS="200",
        )
        quantum = Quantum(env, tmp / "work")
        worker = quantum.start("worker", "worker")
        bridge = quantum.start("bridge", "bridge")
        watcher = ChildEnvironments(lambda: [worker.pid, bridge.pid])
        watcher.start()
        await quantum.wait_for_line("worker", "worker on task queue")
        await quantum.wait_for_line("bridge", "bridge consuming")

        inspector = await Client.connect(server.address, data_converter=pydantic_data_converter)
        nc = await nats.connect(bus.url, user_credentials=str(bus.creds))
        try:
            await ensure_streams(nc.jetstream())
            # 1. a code generation on the scripted model, requested on the bus
            model.script(files(**{f"{PROJECT}.py": CODE}))
            code_id = "codegen-" + await publish(
                nc,
                "quantum.code.requested",
                {"project": PROJECT, "prompt": f"arithmetic helpers {planted.holder.decode()}", "requested_by": "dan"},
            )
            codegen = await wait_for(
                inspector.get_workflow_handle(code_id), lambda v: v.status != "running", timeout=90
            )

            # 2. a prod pipeline: a failed attempt printing the sandbox's environment, repaired; two signed reviews
            model.script(
                files(**{f"{PROJECT}.py": CODE}),
                files(**{f"test_{PROJECT}.py": SHOW_ENVIRONMENT}),
                files(**{f"{PROJECT}.py": CODE}),
                files(**{f"test_{PROJECT}.py": SUITE}),
            )
            request = {
                "project": PROJECT,
                "prompt": f"arithmetic helpers: add numbers, tell even ones {planted.holder.decode()}",
                "requested_by": REQUESTER,
                "environment": "prod",
                "max_attempts": 2,
                "infrastructure": [{"kind": "stream", "name": "orders"}],
            }
            (tmp / "work" / "request.json").write_text(json.dumps(request))
            said = await quantum.run("cli-request", "pipeline", "request", "request.json", "--no-follow")
            run_id = next(word for word in said.split() if word.startswith("pipeline-"))
            handle: WorkflowHandle[Any, Any] = inspector.get_workflow_handle(run_id)

            view = await wait_for(handle, lambda v: v.pending_gate == "infra" or v.status not in WAITING, timeout=120)
            assert view.pending_gate == "infra", view.model_dump_json()
            decision = ReviewDecision(
                gate="infra",
                reviewer=REVIEWER,
                approved=True,
                comment=f"plan ok {planted.holder.decode()}",
                digest=view.gate_digests["infra"],
                challenge=view.gate_challenges["infra"],
            )
            review = signed(decision, run_id, reviewer, dt.datetime.now(dt.UTC))
            await publish(
                nc, "quantum.review.submitted", {"pipeline_id": run_id, **review.model_dump(exclude_none=True)}
            )
            view = await wait_for(handle, lambda v: v.pending_gate == "deploy" or v.status not in WAITING, timeout=120)
            assert view.pending_gate == "deploy", view.model_dump_json()
            await quantum.run(
                "cli-review",
                "review",
                run_id,
                "--gate",
                "deploy",
                "--approve",
                "--reviewer",
                REVIEWER,
                "--comment",
                f"ship it {planted.holder.decode()}",
            )
            pipeline = await wait_for(handle, lambda v: v.status not in WAITING, timeout=120)

            # 3. an event the bridge cannot use: a dead letter
            await publish(
                nc,
                "quantum.review.submitted",
                {"pipeline_id": run_id, "gate": "deploy", "reviewer": REVIEWER, "approved": "yes", "comment": "x"},
            )
            deadline = time.monotonic() + 60
            while (await nc.jetstream().stream_info(DLQ_STREAM)).state.messages < 1:
                assert time.monotonic() < deadline, "no dead letter"
                await asyncio.sleep(0.2)

            places: dict[str, bytes] = {}
            run_ids = [wf.id async for wf in inspector.list_workflows()]
            assert {code_id, run_id} <= set(run_ids), run_ids
            shown = await asyncio.gather(*(temporal_show(server.address, i) for i in run_ids))
            places["history: temporal workflow show --output json"] = b"\n".join(shown)
            histories = [await inspector.get_workflow_handle(i).fetch_history() for i in run_ids]
            places["history: client fetch_history, JSON"] = "\n".join(h.to_json() for h in histories).encode()
            places["history: client fetch_history, protobuf"] = b"".join(
                event.SerializeToString() for h in histories for event in h.events
            )
            views = [await inspector.get_workflow_handle(i).query("status", result_type=RunStatusView) for i in run_ids]
            places["status queries"] = b"\n".join(v.model_dump_json().encode() for v in views)
            for name, blob in (await stream_messages(nc)).items():
                places[f"stream: {name}"] = blob
            refused = await refusals(bus.url, f"127.0.0.1:{front.port}", tls)
        finally:
            await nc.close()

        worker_environ = Path(f"/proc/{worker.pid}/environ").read_bytes()
        quantum.stop()
        watcher.stop()
        places["child processes: environments and command lines"] = watcher.blob
        for name, log in sorted(quantum.logs.items()):
            places[f"log: quantum {name}"] = log.read_bytes()
        places["log: temporal dev server"] = (tmp / "t.log").read_bytes()
        places["log: nats-server"] = bus.log.read_bytes()
        places["database: Temporal SQLite files"] = b"".join(
            path.read_bytes() for path in sorted(tmp.glob("t.db*")) if path.is_file()
        )
        places["model: request bodies"] = json.dumps([r["json"] for r in model.requests]).encode()
        places["data directory: every file"] = directory_bytes(data_dir)
        yield Exposure(
            secrets=secrets,
            planted=planted,
            places=places,
            model_requests=list(model.requests),
            review_identities=[entry.identity for entry in pipeline.audit if entry.accepted],
            worker_environ=worker_environ,
            programs=watcher.programs,
            refused=refused,
            statuses={"codegen": codegen.status, "pipeline": pipeline.status},
            children={cmdline: environ for (_, cmdline), environ in watcher.seen.items()},
        )
    finally:
        if watcher is not None:
            watcher.stop()
        if quantum is not None:
            quantum.stop()
        stack.close()
        await server.stop()


def table(exposure: Exposure, secrets: list[Secret]) -> dict[str, dict[str, int]]:
    """Hits of each secret in each place; printed, so that the figures can be quoted."""
    found = {place: {s.name: s.hits(blob) for s in secrets} for place, blob in exposure.places.items()}
    width = max(len(place) for place in found)
    print(f"\n{'place searched':<{width}}  {'bytes':>10}  " + "  ".join(f"[{i}]" for i in range(len(secrets))))
    for place, counts in found.items():
        cells = "  ".join(f"{counts[s.name]:>{len(str(i)) + 2}}" for i, s in enumerate(secrets))
        print(f"{place:<{width}}  {len(exposure.places[place]):>10}  {cells}")
    for i, secret in enumerate(secrets):
        print(f"[{i}] {secret.name}: {len(secret.needles)} encodings searched")
    return found


def test_the_runs_used_every_credential_they_could(exposure: Exposure) -> None:
    assert exposure.statuses == {"codegen": "succeeded", "pipeline": "succeeded"}
    llm_key = next(s for s in exposure.secrets if s.name.startswith("LLM")).holder.decode()
    assert exposure.model_requests and all(
        r["headers"].get("authorization") == f"Bearer {llm_key}" for r in exposure.model_requests
    )  # every request the model got carried the key
    assert exposure.review_identities == [f"ed25519:{REVIEWER}"] * 2  # both gates: signed with the private key
    assert set(exposure.refused) == {"nats without the creds file", "temporal without a client certificate"}
    assert "Authorization Violation" in exposure.refused["nats without the creds file"]
    print(f"\nrefused without the credentials: {exposure.refused}")
    print(f"programs the worker and the bridge started: {', '.join(exposure.programs)}")


def test_no_credential_is_found_anywhere(exposure: Exposure) -> None:
    found = table(exposure, [*exposure.secrets, exposure.planted])
    leaks = {
        place: {n: c for n, c in counts.items() if c and n != exposure.planted.name} for place, counts in found.items()
    }
    holders = [
        cmdline.replace(b"\0", b" ").decode(errors="replace")
        for cmdline, environ in exposure.children.items()
        if any(s.hits(cmdline + environ) for s in exposure.secrets)
    ]
    assert not any(leaks.values()), ({place: counts for place, counts in leaks.items() if counts}, holders)


def test_each_place_holds_what_it_should(exposure: Exposure) -> None:
    """The controls: the string planted in the prompts and review comments is found wherever the content of runs
    goes (the codec is off: payloads are in clear), each log holds its process's output, the sandbox's environment
    was seen, and the sampler read the processes the worker started."""
    places, planted = exposure.places, exposure.planted
    for place in (
        "history: temporal workflow show --output json",
        "history: client fetch_history, JSON",
        "history: client fetch_history, protobuf",
        "status queries",
        "stream: QUANTUM_EVENTS",
        "stream: QUANTUM_AUDIT",
        "database: Temporal SQLite files",
        "model: request bodies",
        "data directory: every file",
    ):
        assert planted.hits(places[place]) > 0, place
    assert b"approved" in places["stream: QUANTUM_DLQ"] and b"Quantum-Dlq-Reason" in places["stream: QUANTUM_DLQ"]
    assert b"worker on task queue" in places["log: quantum worker"]
    assert b"bridge consuming" in places["log: quantum bridge"]
    assert b"DEBUG" in places["log: quantum worker"]  # the most verbose level was searched
    assert b"pipeline-" in places["log: quantum cli-request"] and b"accepted" in places["log: quantum cli-review"]
    assert b"Server is ready" in places["log: nats-server"]
    # the sandbox's environment reached the history and the repair request: it would carry any secret it held
    for place in (
        "history: client fetch_history, protobuf",
        "database: Temporal SQLite files",
        "model: request bodies",
    ):
        shown = places[place].split(b"AssertionError: " + ENV_MARK.encode() + b" ", 1)
        assert len(shown) == 2 and b"PATH=/" in shown[1][:1000], place
    # the release lives on; a sandboxed pytest lasts under a second and a loaded machine may sample none of one kind
    assert "python -m agents.release_server" in exposure.programs, exposure.programs
    assert {"bwrap", "python -m pytest"} & set(exposure.programs), exposure.programs
    assert len(places["child processes: environments and command lines"]) > 1000


def test_each_credential_is_found_where_it_is_held(exposure: Exposure) -> None:
    """The search itself: each credential's forms are found in the variable or the file holding it, and the worker's
    own environment (read as the children's are) holds those given as variables."""
    for secret in exposure.secrets:
        assert secret.hits(secret.holder) > 0, secret.name
        for form in secret.forms:  # and wherever it would be encoded, at any offset
            for shift in range(3):
                framed = b"x" * shift + form + b"yz"
                for encode in (base64.b64encode, base64.urlsafe_b64encode, lambda b: b.hex().encode()):
                    assert secret.hits(b"{" + encode(framed) + b"}"), (secret.name, shift, encode)
    in_variables = [s for s in exposure.secrets if s.variable]
    assert len(in_variables) == 4
    assert all(s.hits(exposure.worker_environ) for s in in_variables)


# --- the two leaks this test found, each pinned down on its own -----------------------------------------------------


def test_promtool_gets_none_of_the_workers_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QSRE ran ``promtool check rules`` with the worker's whole environment (found above, among the children)."""
    from agents.sre import check_rules

    secret = "sk-" + canary("llm")
    monkeypatch.setenv("QUANTUM_LLM_API_KEY", secret)
    monkeypatch.setenv("QUANTUM_TEMPORAL_API_KEY", secret)
    seen = tmp_path / "environment"
    promtool = tmp_path / "promtool"
    promtool.write_text(f"#!/bin/sh\nenv > '{seen}'\n")
    promtool.chmod(0o755)
    assert check_rules(str(promtool), "groups: []\n").checked
    assert b"PATH=" in seen.read_bytes()
    assert plain_secret("key", secret).hits(seen.read_bytes()) == 0


async def test_a_password_in_the_nats_url_is_not_in_a_provisioning_failure(tmp_path: Path) -> None:
    """A provisioning failure, kept by the run's history, named the NATS URL as configured, password included."""
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    from agents.infra import InfraAgent
    from agents.models import PlanInfraInput, ResourceSpec

    password = canary("nats-password")
    agent = InfraAgent(tmp_path / "infra", f"nats://quantum:{password}@127.0.0.1:{free_port()}")
    spec = ResourceSpec.model_validate({"kind": "stream", "name": "orders"})
    with pytest.raises(ApplicationError) as info:  # planning a stream already asks NATS what exists
        await ActivityEnvironment().run(
            agent.plan, PlanInfraInput(run_id="run-1", project="shop", environment="dev", resources=[spec])
        )
    assert info.value.type == "ProvisionFailure" and "nats://***@127.0.0.1:" in info.value.message
    assert password not in str(info.value) and password not in repr(info.value.details)
