"""Hostile code in the sandbox: each attack is contained and reported, and nothing outside the workspace changes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from agents.processes import GROUP_GUARD
from agents.sandbox import Sandbox, SandboxResult
from tests.stack.helpers import cmdline, processes_mentioning

pytestmark = pytest.mark.timeout(120)


def digest_tree(root: Path) -> str:
    """One hash over every file's path and content below ``root``."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def protected(tmp_path: Path) -> Path:
    """A place outside the workspace holding a secret, as the worker's machine would."""
    place = tmp_path / "outside"
    place.mkdir()
    (place / "secret.txt").write_text("the worker's secret")
    return place


async def run_script(
    workspace: Path, script: str, *, timeout: float = 60, sandbox: Sandbox | None = None
) -> tuple[SandboxResult, dict]:
    workspace.mkdir(exist_ok=True)
    (workspace / "hostile.py").write_text(textwrap.dedent(script))
    sandbox = sandbox or Sandbox()
    result = await sandbox.run([sys.executable, "hostile.py"], workspace=workspace, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result, json.loads(lines[-1]) if lines else {}


async def test_no_network_to_the_bus_temporal_or_the_outside(
    tmp_path: Path, temporal_address: str, nats_url: str
) -> None:
    nats_port = int(nats_url.rsplit(":", 1)[1])
    temporal_port = int(temporal_address.rsplit(":", 1)[1])
    result, seen = await run_script(
        tmp_path / "ws",
        f"""
        import json, socket
        seen = {{}}
        for name, address in {{"temporal": ("127.0.0.1", {temporal_port}), "nats": ("127.0.0.1", {nats_port}),
                              "outside": ("192.0.2.1", 80)}}.items():
            try:
                socket.create_connection(address, timeout=2).close()
                seen[name] = "connected"
            except OSError as err:
                seen[name] = type(err).__name__
        print(json.dumps(seen))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert set(seen) == {"temporal", "nats", "outside"}
    assert "connected" not in seen.values(), seen


async def test_no_secrets_no_home_and_no_writes_outside(tmp_path: Path, protected: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-worker-secret")
    monkeypatch.setenv("QUANTUM_LLM_API_KEY", "another-secret")
    before = digest_tree(protected), digest_tree(Path(sys.prefix) / "bin")
    result, seen = await run_script(
        tmp_path / "ws",
        f"""
        import json, os
        seen = {{"env": sorted(k for k in os.environ if "KEY" in k or "TOKEN" in k or "SECRET" in k)}}
        seen["ssh"] = os.path.exists(os.path.expanduser("~/.ssh")) or os.path.exists("/root/.ssh")
        try:
            seen["secret"] = open("{protected / "secret.txt"}").read()
        except OSError as err:
            seen["secret"] = type(err).__name__
        writes = {{}}
        for target in ["{protected / "planted.txt"}", "/usr/planted.txt", "{Path(sys.prefix) / "bin" / "planted"}",
                       "/etc/planted"]:
            try:
                open(target, "w").write("x")
                writes[target] = "written"
            except OSError as err:
                writes[target] = type(err).__name__
        seen["writes"] = writes
        open("inside.txt", "w").write("ok")
        print(json.dumps(seen))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert seen["env"] == []
    assert seen["ssh"] is False
    assert seen["secret"] == "FileNotFoundError"  # /tmp inside is a fresh tmpfs: the worker's files are not there
    assert (tmp_path / "ws" / "inside.txt").read_text() == "ok"
    assert (digest_tree(protected), digest_tree(Path(sys.prefix) / "bin")) == before
    assert not (protected / "planted.txt").exists() and not Path("/usr/planted.txt").exists()


async def test_a_fork_bomb_is_contained(tmp_path: Path) -> None:
    result, seen = await run_script(
        tmp_path / "ws",
        """
        import json, os, time
        forked, refused = 0, None
        try:
            for _ in range(100000):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                forked += 1
        except OSError as err:
            refused = type(err).__name__
        print(json.dumps({"forked": forked, "refused": refused}))
        """,
        timeout=30,
    )
    assert "pids-cgroup" in result.isolation
    assert seen["refused"] == "BlockingIOError"  # EAGAIN from pids.max
    assert seen["forked"] < 64
    marker = str(tmp_path / "ws")
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, "hostile.py") and _cwd_is(p, marker)]
    assert leftovers == []


def _cmdline_has(pid: str, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _cwd_is(pid: str, path: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/cwd") == path
    except OSError:
        return False


async def test_a_4_gib_allocation_is_refused(tmp_path: Path) -> None:
    result, seen = await run_script(
        tmp_path / "ws",
        """
        import json
        try:
            block = bytearray(4 * 1024**3)
            outcome = "allocated"
        except MemoryError:
            outcome = "MemoryError"
        print(json.dumps({"outcome": outcome}))
        """,
    )
    assert seen == {"outcome": "MemoryError"}


MIB = 1024 * 1024
FILL = """
import errno, json, os, time
place, chunk, written, refused = {place!r}, b"\\1" * (16 * 1024 * 1024), 0, None
try:
    os.mkdir(place)
    for i in range(96):  # 1.5 GiB, a file per 16 MiB: the per-file size cap alone does not bound it
        fd = os.open(f"{{place}}/fill-{{i}}", os.O_WRONLY | os.O_CREAT)
        view = memoryview(chunk)
        while view:
            done = os.write(fd, view)
            written, view = written + done, view[done:]
        os.close(fd)
except OSError as err:
    refused = errno.errorcode[err.errno]
print(json.dumps({{"written": written, "refused": refused}}), flush=True)
time.sleep(1)  # holds what it wrote while the test watches the host's shared memory
"""
FILL_BOUNDS = {"/tmp": 64 * MIB, "/dev/shm": 16 * MIB, "/dev": 0, "/": 0}
"""What the default sandbox lets a run write into each place: its sized /tmp and /dev/shm, a read-only /dev and /."""
SHMEM_SLACK = 48 * MIB
"""What else on the host may take shared memory during a run (the sandbox's own start, other processes)."""


def shmem_bytes() -> int:
    """The host's shared memory (tmpfs pages among it) from ``/proc/meminfo``."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no Shmem in /proc/meminfo")


async def fill_and_watch(workspace: Path, place: str, sandbox: Sandbox) -> tuple[SandboxResult, dict, int]:
    """Run hostile code filling ``place`` in ``sandbox``; what it says and the host's peak Shmem growth meanwhile."""
    before = peak = shmem_bytes()
    watching = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not watching.is_set():
            peak = max(peak, shmem_bytes())
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        result, seen = await run_script(workspace, FILL.format(place=place), timeout=90, sandbox=sandbox)
    finally:
        watching.set()
        await watcher
    return result, seen, peak - before


@pytest.mark.parametrize(
    ("isolation", "target"), [*[("bwrap", t) for t in FILL_BOUNDS], ("unshare", "/tmp"), ("unshare", "/dev/shm")]
)
async def test_filling_tmp_and_shared_memory_meets_their_bound(tmp_path: Path, isolation: str, target: str) -> None:
    """Writing 1.5 GiB into a tmpfs is refused at its size (ENOSPC), or at once where it is read-only; those pages
    are outside the address-space cap, so the host's shared memory must not grow by more than the bound either."""
    place = f"{target.rstrip('/')}/quantum-fill-{uuid.uuid4().hex}"
    sandbox = Sandbox(bwrap="") if isolation == "unshare" else Sandbox()
    try:
        result, seen, grown = await fill_and_watch(tmp_path / "ws", place, sandbox)
    finally:
        shutil.rmtree(place, ignore_errors=True)  # only ever there if the run wrote to the host's own directory
    assert result.isolation.startswith(isolation), result.isolation
    assert result.returncode == 0, result.stderr
    bound = FILL_BOUNDS[target]
    assert seen["written"] <= bound, f"{seen['written'] / MIB:.0f} MiB written into {target}, bound {bound / MIB:.0f}"
    assert grown <= bound + SHMEM_SLACK, f"the host's Shmem grew by {grown / MIB:.0f} MiB"
    assert seen["refused"] in {"ENOSPC", "EROFS"}, seen


async def test_an_endless_loop_is_killed_at_the_timeout(tmp_path: Path) -> None:
    result, _ = await run_script(tmp_path / "ws", "while True:\n    pass\n", timeout=2)
    assert result.timed_out
    assert result.returncode != 0


async def test_killing_the_parent_reaches_nothing_outside(tmp_path: Path) -> None:
    result, seen = await run_script(
        tmp_path / "ws",
        f"""
        import json, os, signal
        seen = {{"pid": os.getpid(), "ppid": os.getppid()}}
        for name, pid in {{"parent": os.getppid(), "worker": {os.getpid()}}}.items():
            try:
                os.kill(pid, signal.SIGKILL)
                seen[name] = "signalled"
            except OSError as err:
                seen[name] = type(err).__name__
        print(json.dumps(seen))
        """,
    )
    assert seen["worker"] in {"ProcessLookupError", "PermissionError"}  # another pid namespace
    assert seen["pid"] < 10  # numbered inside its own pid namespace
    assert os.getpid() > 0 and Path(f"/proc/{os.getpid()}").exists()  # the worker is alive


async def test_without_bubblewrap_it_falls_back_to_unshare_and_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-worker-secret")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "probe.py").write_text(
        "import json, os, socket\n"
        "try:\n    socket.create_connection(('127.0.0.1', 22), timeout=1); net = 'open'\n"
        "except OSError as err:\n    net = type(err).__name__\n"
        "print(json.dumps({'net': net, 'keys': [k for k in os.environ if 'KEY' in k]}))\n"
    )
    result = await Sandbox(bwrap="").run([sys.executable, "probe.py"], workspace=workspace, timeout=30)
    assert result.isolation.startswith("unshare")
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["keys"] == [] and seen["net"] != "open"


OWNER = """
import asyncio, sys
from agents.processes import run_bounded
from agents.sandbox import Sandbox
from pathlib import Path

async def main(kind: str, command: list[str], workspace: str) -> None:
    if kind == "sandbox":
        await Sandbox().run(command, workspace=Path(workspace), timeout=300)
    else:
        await run_bounded(command, timeout=300, guard_group=kind == "guarded")

asyncio.run(main(sys.argv[1], sys.argv[3:], sys.argv[2]))
"""
LEAVER = """
import subprocess, sys, time
grandchild = [sys.executable, "-c", "import time; time.sleep(300)", sys.argv[1] + "-grandchild"]
subprocess.Popen(grandchild)  # arms no parent-death signal
time.sleep(300)
"""


def _owner(tmp_path: Path, kind: str, command: list[str]) -> subprocess.Popen[bytes]:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.Popen([sys.executable, "-c", OWNER, kind, str(workspace), *command], env=env, cwd=root)


def _wait_for(check, seconds: float = 60) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("kind", ["guarded", "bare"])
def test_what_a_run_leaves_in_its_group_dies_with_its_owner_when_guarded(tmp_path: Path, kind: str) -> None:
    """A grandchild that arms no parent-death signal of its own (as bwrap's sandbox init, killed in its start-up,
    does not) outlives an owner killed with SIGKILL, unless the run is guarded: then its whole group dies."""
    marker = f"leftover-{uuid.uuid4()}"
    grandchild = f"{marker}-grandchild"
    owner = _owner(tmp_path, kind, [sys.executable, "-c", LEAVER, marker])
    try:
        assert _wait_for(lambda: bool(processes_mentioning(grandchild))), "the run and its grandchild start"
        owner.kill()
        owner.wait()
        gone = _wait_for(lambda: not processes_mentioning(marker), seconds=20)
        assert gone is (kind == "guarded"), [processes_mentioning(marker), kind]
    finally:
        for pid in processes_mentioning(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_sandboxed_run_is_guarded_and_dies_with_its_owner(tmp_path: Path) -> None:
    marker = f"sandboxed-{uuid.uuid4()}"
    owner = _owner(tmp_path, "sandbox", [sys.executable, "-c", "import time; time.sleep(300)", marker])
    try:
        command = [sys.executable, "-c", "import time; time.sleep(300)", marker]
        assert _wait_for(lambda: command in [cmdline(pid) for pid in processes_mentioning(marker)]), "the command runs"
        children = Path(f"/proc/{owner.pid}/task/{owner.pid}/children").read_text().split()
        assert [cmdline(int(c))[:3] for c in children] == [list(GROUP_GUARD[:3])]
        owner.kill()
        owner.wait()
        assert _wait_for(lambda: not processes_mentioning(marker), seconds=20), processes_mentioning(marker)
    finally:
        for pid in processes_mentioning(marker):
            os.kill(pid, signal.SIGKILL)


SERVICE_HOST = """
import os, sys, time
from pathlib import Path
from agents.release_server import Service

base = Path(sys.argv[1])
os.chdir(base / "host")  # the socket is bound relative to the host's working directory, as the release host does
service = Service(base / "root", base / "artifact", "svc", base / "host", base / "service.log")
service.start()
print("started", flush=True)
time.sleep(300)
"""
SERVICE = """
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def make_server(port, host):
    return ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)
"""


def test_a_released_service_dies_with_its_host(tmp_path: Path) -> None:
    """The release host runs the service's sandbox under the guard: killed with SIGKILL, it takes all of it along."""
    (tmp_path / "artifact" / "src").mkdir(parents=True)
    (tmp_path / "artifact" / "src" / "svc.py").write_text(SERVICE)
    (tmp_path / "host").mkdir()
    root = Path(__file__).resolve().parents[2]
    host = subprocess.Popen(
        [sys.executable, "-c", SERVICE_HOST, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
    )
    marker = str(tmp_path / "root")
    try:
        assert host.stdout is not None and host.stdout.readline() == b"started\n"
        launched = _wait_for(lambda: bool(processes_mentioning("quantum_launcher.py")))
        assert launched, (tmp_path / "service.log").read_text()
        children = Path(f"/proc/{host.pid}/task/{host.pid}/children").read_text().split()
        assert [cmdline(int(c))[:3] for c in children] == [list(GROUP_GUARD[:3])]
        host.kill()
        host.wait()
        gone = _wait_for(lambda: not processes_mentioning(marker), seconds=20)
        assert gone, [cmdline(p) for p in processes_mentioning(marker)]
    finally:
        for pid in processes_mentioning(marker):
            os.kill(pid, signal.SIGKILL)
