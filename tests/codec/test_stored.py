"""What Temporal stores with the codec on: canary strings in a run's prompt, requester, a review's comment and a
failure message, then looked for in the ``temporal`` CLI's output, in the history as a client without the keys
fetches it, and in the bytes of the server's SQLite files. Each place is searched for the canaries of a run made with
the codec off too: there they are found, so a search that finds nothing means something."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from events.models import ReviewDecision
from quantum.cli.codec import CodecHTTPServer
from quantum.client import connect, data_converter
from quantum.codec import EncryptionCodec
from quantum.stack import TemporalDevServer
from tests.conftest import free_port
from tests.workflows.conftest import Harness, failing, harness_with, status
from workflows.models import PipelineResult

from .support import keys_json, settings

pytestmark = pytest.mark.workflow

TEMPORAL = Path(sys.executable).parent / "temporal"
TOKEN = "codec-token-0123456789abcdef"
KINDS = ("prompt", "requester", "comment", "failure")


def canaries(tag: str) -> dict[str, str]:
    """One unique string per kind of content; letters, digits and '-' only, so JSON leaves them as they are."""
    return {kind: f"canary-{tag}-{kind}-{uuid.uuid4().hex}" for kind in KINDS}


def hits(haystack: bytes, canary: str) -> int:
    """How often ``canary`` occurs in ``haystack``, as it is or in base64 at any of the three alignments (the form
    in which protobuf JSON shows a payload's bytes)."""
    found = haystack.count(canary.encode())
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + canary.encode())
        found += haystack.count(encoded[4 * ((shift + 2) // 3) : 4 * ((shift + len(canary)) // 3)])
    return found


@dataclass
class Runs:
    """Two code generation runs carrying the canaries: one succeeds (prompt, requester, a review's comment), one
    fails with the failure canary in its activity's error message."""

    canaries: dict[str, str]
    succeeded: WorkflowHandle[Any, Any]
    failed: WorkflowHandle[Any, Any]

    @property
    def ids(self) -> tuple[str, str]:
        return self.succeeded.id, self.failed.id


async def make_runs(running: AsyncExitStack, harness: Harness, tag: str) -> Runs:
    """The two runs, on two task queues whose workers keep running with ``running``: the second one's
    ``codegen.fingerprint_code`` fails with the failure canary."""
    marks = canaries(tag)
    request = {
        "project": "slugs",
        "prompt": f"a slugify helper for titles {marks['prompt']}",
        "requested_by": marks["requester"],
    }
    review = ReviewDecision(gate="deploy", reviewer="bob", approved=True, comment=marks["comment"])
    failing_harness = Harness(harness.client, harness.settings, harness.agents)
    await running.enter_async_context(harness.worker())
    await running.enter_async_context(failing_harness.worker(failing("codegen.fingerprint_code", marks["failure"])))
    succeeded = await harness.client.start_workflow(
        "CodeGenerationWorkflow",
        request,
        id=f"codegen-{uuid.uuid4()}",
        task_queue=harness.task_queue,
        result_type=PipelineResult,
        start_signal="review",
        start_signal_args=[review],
    )
    failed = await failing_harness.start("CodeGenerationWorkflow", request, prefix="codegen")
    await succeeded.result()
    with pytest.raises(WorkflowFailureError):
        await failed.result()
    return Runs(marks, succeeded, failed)


@dataclass
class Stored:
    server: TemporalDevServer
    db_file: Path
    codec: EncryptionCodec
    keyless: Client
    encrypted: Runs
    clear: Runs


@pytest.fixture(scope="module")
async def stored(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stored]:
    """A dev server of its own on a SQLite file, with two runs made with the codec and two without; their workers
    keep running (a query needs one)."""
    tmp = tmp_path_factory.mktemp("stored")
    server = TemporalDevServer(
        host="127.0.0.1",
        port=free_port(),
        ui_port=None,
        headless=True,
        db_file=tmp / "t.db",
        log_file=tmp / "t.log",
    )
    await server.start()
    try:
        keyed = settings(codec_keys=keys_json("k1")[0])
        converter = data_converter(keyed)
        assert isinstance(converter.payload_codec, EncryptionCodec)
        with_codec = await connect(keyed, address=server.address)  # the product's client: headers encoded too
        keyless = await Client.connect(server.address, data_converter=pydantic_data_converter)
        async with AsyncExitStack() as running:
            on = await running.enter_async_context(harness_with(with_codec, nats_url, tmp / "on"))
            off = await running.enter_async_context(harness_with(keyless, nats_url, tmp / "off"))
            encrypted = await make_runs(running, on, "on")
            clear = await make_runs(running, off, "off")
            yield Stored(server, tmp / "t.db", converter.payload_codec, keyless, encrypted, clear)
    finally:
        await server.stop()


SDK_OWN = re.compile(
    r"/markerRecordedEventAttributes/details/(patch-data|data)/|/searchAttributes/indexedFields/TemporalChange"
)
"""Where the SDK's core writes payloads of its own, which no codec sees: a ``workflow.patched`` marker's patch id,
a local activity marker's bookkeeping (its sequence, attempt, activity type and completion time; its result is a
payload of the run's and is encrypted) and the ``TemporalChangeVersion`` search attribute listing the patch ids."""


def payload_encodings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Where each payload of a history's JSON form is, and its ``encoding``."""
    if isinstance(node, dict):
        metadata = node.get("metadata")
        if isinstance(metadata, dict) and "encoding" in metadata:
            yield path, base64.b64decode(metadata["encoding"]).decode()
        for key, value in node.items():
            yield from payload_encodings(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from payload_encodings(value, f"{path}[{index}]")


async def temporal_show(address: str, run_id: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    argv = [str(TEMPORAL), "workflow", "show", "--workflow-id", run_id, "--address", address, "--output", "json"]
    proc = await asyncio.create_subprocess_exec(
        *argv, *options, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return subprocess.CompletedProcess(argv, proc.returncode or 0, out, err)


async def test_the_runs_decode_with_the_codec(stored: Stored) -> None:
    marks = stored.encrypted.canaries
    view = await status(stored.encrypted.succeeded)
    assert view.status == "succeeded"
    assert [entry.comment for entry in view.audit] == [marks["comment"]]
    result = await stored.encrypted.succeeded.result()
    assert result.status == "succeeded" and result.outputs["pattern"] == "slugify"

    with pytest.raises(WorkflowFailureError) as info:
        await stored.encrypted.failed.result()
    assert isinstance(info.value.cause, ApplicationError)
    assert marks["failure"] in info.value.cause.message
    view = await status(stored.encrypted.failed)
    assert view.status == "failed" and marks["failure"] in (view.error or "")


async def test_a_client_without_the_keys_reads_no_canary(stored: Stored) -> None:
    for run_id in stored.encrypted.ids:
        history = await stored.keyless.get_workflow_handle(run_id).fetch_history()
        stored_bytes = b"".join(event.SerializeToString() for event in history.events)
        assert {kind: hits(stored_bytes, mark) for kind, mark in stored.encrypted.canaries.items()} == dict.fromkeys(
            KINDS, 0
        )
        encodings = list(payload_encodings(history.to_json_dict()))
        assert sum(encoding == "binary/encrypted" for _, encoding in encodings) >= 10
        in_clear = {path for path, encoding in encodings if encoding != "binary/encrypted"}
        assert all(SDK_OWN.search(path) for path in in_clear), in_clear  # only the SDK's own bookkeeping
    with pytest.raises(KeyError, match="binary/encrypted"):  # the status is there, but not for this client
        await stored.keyless.get_workflow_handle(stored.encrypted.succeeded.id).query("status")

    clear = b""
    for run_id in stored.clear.ids:
        history = await stored.keyless.get_workflow_handle(run_id).fetch_history()
        clear += b"".join(event.SerializeToString() for event in history.events)
    assert all(hits(clear, mark) for mark in stored.clear.canaries.values())


async def test_the_temporal_cli_shows_no_canary(stored: Stored) -> None:
    shown = b""
    for run_id in stored.encrypted.ids:
        done = await temporal_show(stored.server.address, run_id)
        assert done.returncode == 0, done.stderr
        shown += done.stdout
    assert {kind: hits(shown, mark) for kind, mark in stored.encrypted.canaries.items()} == dict.fromkeys(KINDS, 0)
    assert b"Encoded failure" in shown  # the failure's message is replaced, the real one is in a payload

    clear = b""
    for run_id in stored.clear.ids:
        clear += (await temporal_show(stored.server.address, run_id)).stdout
    assert all(hits(clear, mark) for mark in stored.clear.canaries.values())


async def test_the_temporal_cli_reads_them_through_the_codec_server(stored: Stored) -> None:
    server = CodecHTTPServer(("127.0.0.1", 0), codec=stored.codec, token=TOKEN, origins=[])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        codec = ["--codec-endpoint", server.url]
        shown = b""
        for run_id in stored.encrypted.ids:
            done = await temporal_show(stored.server.address, run_id, *codec, "--codec-auth", f"Bearer {TOKEN}")
            assert done.returncode == 0, done.stderr
            shown += done.stdout
        assert all(hits(shown, mark) for mark in stored.encrypted.canaries.values())

        refused = await temporal_show(
            stored.server.address, stored.encrypted.succeeded.id, *codec, "--command-timeout", "3s"
        )
        assert not any(hits(refused.stdout, mark) for mark in stored.encrypted.canaries.values())
        assert refused.returncode != 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_the_database_files_hold_no_canary(stored: Stored) -> None:
    files = [stored.db_file, stored.db_file.with_name(stored.db_file.name + "-wal")]
    data = b"".join(path.read_bytes() for path in files if path.exists())
    assert len(data) > 100_000
    found = {kind: hits(data, mark) for kind, mark in stored.encrypted.canaries.items()}
    assert found == dict.fromkeys(KINDS, 0), found
    control = {kind: hits(data, mark) for kind, mark in stored.clear.canaries.items()}
    assert all(control.values()), control


async def test_a_worker_refuses_a_client_that_would_leave_headers_in_clear(temporal_address: str) -> None:
    """Runs carry their events in activity headers; a client that encodes payloads but not headers would store
    those events in clear, so no worker is built on it."""
    from quantum.worker import new_worker

    converter = data_converter(settings(codec_keys=keys_json("k1")[0]))
    payloads_only = await Client.connect(temporal_address, data_converter=converter)
    with pytest.raises(ValueError, match="encodes payloads but not headers"):
        new_worker(payloads_only, [], task_queue=f"q-{uuid.uuid4()}")
    headers_too = await connect(settings(codec_keys=keys_json("k1")[0]), address=temporal_address)
    assert new_worker(headers_too, [], task_queue=f"q-{uuid.uuid4()}") is not None
