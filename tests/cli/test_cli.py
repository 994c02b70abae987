"""The ``quantum`` command line, run as a user runs it: as a program, against the real embedded stack."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantum.cli import app
from tests.cli.support import QUANTUM, answers, processes_mentioning, quantum, quantum_env, requested_run_at_gate
from tests.conftest import free_port

runner = CliRunner()


# --- request files -------------------------------------------------------------------------------------------------


def test_a_bad_request_file_names_the_field_and_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"project": "Bad Name", "prompt": "an http service", "environment": "moon"}))
    result = runner.invoke(app, ["pipeline", "request", str(bad)])
    assert result.exit_code == 1
    assert "bad.json is not a valid PipelineRequest" in result.output
    assert "project: String should match pattern" in result.output
    assert "requested_by: Field required" in result.output
    assert "environment: Input should be 'dev', 'staging' or 'prod'" in result.output


def test_a_request_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{project: ")
    result = runner.invoke(app, ["pipeline", "request", str(bad)])
    assert result.exit_code == 1
    assert "is not valid JSON" in result.output


def test_a_missing_request_file_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pipeline", "request", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "cannot read" in result.output


def test_a_request_needs_a_file_or_a_prompt() -> None:
    result = runner.invoke(app, ["pipeline", "request"])
    assert result.exit_code == 2
    assert "either a request FILE or --prompt" in result.output


def test_yaml_request_files_are_read(tmp_path: Path) -> None:
    from events.models import PipelineRequest
    from quantum.requests import load_model

    path = tmp_path / "req.yaml"
    path.write_text("project: ledger\nprompt: a semantic version parser\nrequested_by: ann\nenvironment: staging\n")
    request = load_model(path, PipelineRequest)
    assert request.project == "ledger" and request.environment == "staging"


# --- quantum up, and the commands against it ---------------------------------------------------------------------


def test_up_serves_everything_and_the_cli_drives_a_run(stack_up: dict[str, str], tmp_path: Path) -> None:
    env = stack_up
    metrics_port = int(env["QUANTUM_METRICS_PORT"])
    assert answers(metrics_port)

    run_id = requested_run_at_gate(
        env,
        "--prompt",
        "an LRU cache for sessions",
        "--project",
        "sessions",
        "--environment",
        "prod",
        "--requested-by",
        "ann",
    )

    own = quantum(env, "review", run_id, "--gate", "deploy", "--approve", "--reviewer", "ann")
    assert own.returncode == 1
    assert "requested this run" in own.stderr

    listed = quantum(env, "pipeline", "list")
    assert run_id[:20] in listed.stdout

    cancelled = quantum(env, "pipeline", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    view = json.loads(quantum(env, "pipeline", "status", run_id, "--json").stdout)
    assert view["status"] == "cancelled"
    assert [c["step"] for c in view["compensations"]] == ["cleanup_tests", "cleanup_code"]

    # the bus: every event of the run, a bad event refused before it is sent, the dead letters and their replay
    tailed = quantum(env, "events", "tail", "--all", "--limit", "3")
    assert tailed.returncode == 0, tailed.stderr
    assert "quantum.pipeline.requested" in tailed.stdout and "quantum.pipeline.started" in tailed.stdout

    bad = tmp_path / "bad-event.json"
    bad.write_text(
        json.dumps(
            {
                "specversion": "1.0",
                "id": "e1",
                "source": "t",
                "type": "quantum.review.submitted",
                "data": {"pipeline_id": run_id, "gate": "deploy"},
            }
        )
    )
    refused = quantum(env, "events", "publish", str(bad))
    assert refused.returncode == 1 and "data.reviewer: Field required" in refused.stderr

    orphan = tmp_path / "orphan-review.json"
    orphan.write_text(
        json.dumps(
            {
                "specversion": "1.0",
                "id": "e2",
                "source": "t",
                "type": "quantum.review.submitted",
                "data": {"pipeline_id": "pipeline-none", "gate": "deploy", "reviewer": "bob", "approved": True},
            }
        )
    )
    sent = quantum(env, "events", "publish", str(orphan))
    assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 60
    while "RunNotFound" not in (letters := quantum(env, "dlq", "list")).stdout:
        assert time.monotonic() < deadline, letters.stdout + letters.stderr
        time.sleep(0.5)
    replayed = quantum(env, "dlq", "replay", "1")
    assert replayed.returncode == 0 and "quantum.events.review.submitted" in replayed.stdout
    assert quantum(env, "dlq", "replay", "999").returncode == 1

    missing = quantum(env, "pipeline", "status", "pipeline-does-not-exist")
    assert missing.returncode == 1 and "no run with id" in missing.stderr

    # a demo beside a running stack uses it and starts nothing of its own
    demo = quantum(env, "demo", "--auto-approve", timeout=300)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-2000:]
    assert "using Temporal at" in demo.stdout and "using NATS at" in demo.stdout
    assert "started Temporal dev server" not in demo.stdout


@pytest.mark.parametrize("service", ["Temporal", "NATS"])
def test_up_refuses_a_port_taken_by_something_else(tmp_path: Path, service: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        ports = (port, free_port()) if service == "Temporal" else (free_port(), port)
        env = quantum_env(tmp_path / "data", *ports, free_port())
        result = quantum(env, "up", timeout=90)
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is in use by something that is not {service}" in result.stderr
    assert processes_mentioning(str(tmp_path / "data")) == []


def test_demo_auto_approve_succeeds_on_a_fresh_data_dir(tmp_path: Path) -> None:
    env = quantum_env(tmp_path / "data", free_port(), free_port(), free_port())
    result = quantum(env, "demo", "--auto-approve", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    assert "approved automatically" in result.stdout
    assert "Temporal UI: http://127.0.0.1:" in result.stdout
    assert processes_mentioning(str(tmp_path / "data")) == []


def test_demo_without_a_terminal_asks_for_auto_approve(tmp_path: Path) -> None:
    env = quantum_env(tmp_path / "data", free_port(), free_port(), free_port())
    result = quantum(env, "demo", timeout=60)
    assert result.returncode == 2
    assert "--auto-approve" in result.stderr


def test_demo_asks_the_person_at_each_gate(tmp_path: Path) -> None:
    """In a terminal, the demo asks at every gate; a rejection at ``deploy`` compensates what was done."""
    import pty
    import re
    import select

    env = quantum_env(tmp_path / "data", free_port(), free_port(), free_port())
    env["TERM"] = "xterm"
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(QUANTUM), "demo"], env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    screen = ""

    def read_until(text: str, timeout: float = 120) -> None:
        nonlocal screen
        deadline = time.monotonic() + timeout
        while text not in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen):
            assert time.monotonic() < deadline, f"never saw {text!r}; screen ends: {screen[-2000:]}"
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    screen += os.read(leader, 65536).decode(errors="replace")
                except OSError:
                    break

    def answer(text: str) -> None:
        os.write(leader, text.encode() + b"\r")

    try:
        read_until("Gate 'infra' waits for a review")
        read_until("reviewer (erin)")
        answer("")
        read_until("approve gate 'infra'?")
        answer("y")
        read_until("comment")
        answer("fine")
        read_until("Gate 'deploy' waits for a review")
        read_until("reviewer (erin)")
        answer("farid")
        read_until("approve gate 'deploy'?")
        answer("n")
        read_until("comment")
        answer("not today")
        read_until("Temporal UI:")
        assert proc.wait(timeout=60) == 1  # the run was rejected
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "gate 'deploy' was rejected" in plain
    assert "destroy_infra" in plain and "cleanup_code" in plain
    assert processes_mentioning(str(tmp_path / "data")) == []
