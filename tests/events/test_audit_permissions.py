"""The NATS permissions of docs/nats/permissions.conf on a real nats-server: only the workers write the audit trail.

A client (who may request runs and submit reviews) and an auditor (who reads the trail) cannot publish a record on
``quantum.audit.>``, nor delete, purge or rewrite ``QUANTUM_AUDIT`` through the JetStream API: the server refuses,
and the stream keeps exactly what the workers wrote.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from temporalio.testing import ActivityEnvironment

from events.audit import AUDIT_STREAM, AuditChain, AuditRecorder, ReviewFields, canonical, run_subject
from events.streams import ensure_streams
from quantum.audit import check, read_records
from tests.conftest import free_port, terminate, wait_listening

PERMISSIONS = Path(__file__).parents[2] / "docs" / "nats" / "permissions.conf"
ROLES = ("service", "client", "auditor")


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A nats-server with JetStream and the documented permissions; yields each role's URL."""
    passwords = {role: secrets.token_urlsafe(16) for role in ROLES}
    port = free_port()
    config = tmp_path / "nats.conf"
    (tmp_path / "permissions.conf").write_text(PERMISSIONS.read_text())
    config.write_text(
        f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{tmp_path / "store"}" }}\ninclude ./permissions.conf\n'
    )
    env = {"PATH": os.environ.get("PATH", "")}
    env.update({f"QUANTUM_NATS_{role.upper()}_PASSWORD": password for role, password in passwords.items()})
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "nats-server"), "-c", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(proc, port, "nats-server with the documented permissions")
        yield {role: f"nats://{role}:{passwords[role]}@127.0.0.1:{port}" for role in ROLES}
    finally:
        terminate(proc)


@pytest.fixture
async def connections(secured: dict[str, str]) -> AsyncIterator[dict[str, tuple[NATS, list[str]]]]:
    """A connection per role, with the errors the server sent it."""
    made: dict[str, tuple[NATS, list[str]]] = {}

    for role, url in secured.items():
        errors: list[str] = []

        async def noted(err: Exception, errors: list[str] = errors) -> None:
            errors.append(str(err))

        made[role] = (await nats.connect(url, error_cb=noted, allow_reconnect=False), errors)
    try:
        yield made
    finally:
        for nc, _ in made.values():
            await nc.close()


async def refused(nc: NATS, errors: list[str], subject: str, body: bytes = b"{}") -> bool:
    """Whether the server refused ``nc`` publishing on ``subject`` (a permissions violation, no JetStream ack)."""
    before = len(errors)
    try:
        await nc.jetstream().publish(subject, body, timeout=1)
    except Exception:  # no responder, a timeout: nothing was stored
        pass
    else:
        return False
    await nc.flush()
    await asyncio.sleep(0.2)
    return any("permissions violation" in e.lower() for e in errors[before:])


async def test_only_the_service_role_writes_the_audit_trail(
    connections: dict[str, tuple[NATS, list[str]]], secured: dict[str, str]
) -> None:
    service, _ = connections["service"]
    await ensure_streams(service.jetstream())
    run_id = f"pipeline-{uuid.uuid4()}"
    recorder = AuditRecorder(secured["service"])  # the workers' recorder, as the service role
    chain = AuditChain.start(run_id)
    review: dict[str, Any] = {"gate": "deploy", "reviewer": "erin", "approved": True, "accepted": True}
    try:
        first = await ActivityEnvironment().run(
            recorder.append, chain.next_input(ReviewFields(**review, reviewed_at="2026-12-07T00:00:00+00:00"))
        )
    finally:
        await recorder.close()
    chain.advance(first)
    stored = (await service.jetstream().stream_info(AUDIT_STREAM)).state.messages

    forged = chain.next_input(ReviewFields(**{**review, "reviewer": "frank"}, reviewed_at="2026-12-07T00:00:01+00:00"))
    record = canonical(forged.record())
    for role in ("client", "auditor"):
        nc, errors = connections[role]
        assert await refused(nc, errors, run_subject(run_id), record), role
        for action in ("PURGE", "DELETE"):
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(f"$JS.API.STREAM.{action}.{AUDIT_STREAM}", b"", timeout=1)
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(f"$JS.API.STREAM.MSG.DELETE.{AUDIT_STREAM}", b'{"seq": 1}', timeout=1)
        assert any("permissions violation" in e.lower() for e in errors), (role, errors)
    # the workers themselves cannot remove the trail through the API either
    svc_errors = connections["service"][1]
    with pytest.raises(nats.errors.TimeoutError):
        await service.request(f"$JS.API.STREAM.DELETE.{AUDIT_STREAM}", b"", timeout=1)
    assert any("permissions violation" in e.lower() for e in svc_errors)

    assert (await service.jetstream().stream_info(AUDIT_STREAM)).state.messages == stored == 1
    # the client still does what it is for, and the auditor reads the trail
    client, _ = connections["client"]
    ack = await client.jetstream().publish("quantum.events.pipeline.requested", b"{}", timeout=5)
    assert ack.stream == "QUANTUM_EVENTS"
    auditor, _ = connections["auditor"]
    trail = await read_records(auditor, run_id=run_id)
    assert len(trail) == 1 and check(trail).intact
