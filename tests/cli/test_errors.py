"""Every way a command can go wrong ends in one line on stderr and the right exit code, never a traceback.

Usage errors (a missing or malformed option, an invalid review) exit 2 before anything is sent; failures of what a
command talks to (Temporal, NATS, files) exit 1. Each case runs the installed console script, as a user does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.support import one_line_error, quantum, quantum_env
from tests.conftest import free_port


@pytest.fixture
def nowhere(tmp_path: Path) -> dict[str, str]:
    """Settings that point at ports where nothing answers: a command that sends anything fails with exit 1."""
    return quantum_env(tmp_path / "data", free_port(), free_port(), free_port())


# --- usage errors: exit 2 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["review", "pipeline-x", "--reviewer", "x", "--approve"], "--gate"),
        (["review", "pipeline-x", "--gate", "deploy", "--approve"], "--reviewer"),
        (["review", "pipeline-x", "--gate", "deploy", "--reviewer", "x"], "--approve or --reject"),
        (["review", "--gate", "deploy", "--reviewer", "x", "--approve"], "PIPELINE_ID"),
        (["pipeline", "status"], "PIPELINE_ID"),
        (["pipeline", "status", ""], "PIPELINE_ID"),
        (["pipeline", "cancel", "   "], "PIPELINE_ID"),
        (["pipeline", "status", "pipeline-\udcff"], "PIPELINE_ID"),
        (["pipeline", "list", "--limit", "many"], "--limit"),
        (["pipeline", "list", "--limit", "-3"], "--limit"),
        (["pipeline", "list", "--limit", "0"], "--limit"),
        (["pipeline", "frobnicate"], "frobnicate"),
        (["pipeline", "request", "--wat"], "--wat"),
        (["pipeline", "request"], "either a request FILE or --prompt"),
        (["pipeline", "request", "--prompt", "a cache", "--environment", "moon"], "--environment"),
        (["pipeline", "request", "--prompt", "a cache", "--project", "Bad Name"], "--project"),
        (["pipeline", "request", "--prompt", "a cache", "--requested-by", " "], "--requested-by"),
        (["events", "tail", "--limit", "-1"], "--limit"),
        (["events", "tail", "--type", "a b"], "--type"),
        (["events", "tail", "--type", ""], "--type"),
        (["dlq", "replay", "abc"], "SEQUENCE"),
        (["dlq", "replay", "0"], "SEQUENCE"),
        (["bench", "events", "--events", "0"], "--events"),
        (["bench", "events", "--rate", "0"], "--rate"),
        (["bench", "events", "--seconds", "-1"], "--seconds"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(nowhere: dict[str, str], args: list[str], named: str) -> None:
    result = quantum(nowhere, *args, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in one_line_error(result)


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--reviewer", "", "--reviewer must not be empty"),
        ("--reviewer", "   ", "--reviewer must not be empty"),
        ("--reviewer", "eve\x07il", "--reviewer contains invisible or control characters (U+0007)"),
        ("--reviewer", "b\u200bob", "--reviewer contains invisible or control characters (U+200B)"),
        ("--reviewer", "r" * 101, "--reviewer is 101 characters long, over the 100 limit"),
        ("--reviewer", "caf\udce9", "--reviewer is not valid text (UTF-8)"),
        ("--gate", "", "--gate must not be empty"),
        ("--gate", "g" * 33, "--gate is 33 characters long, over the 32 limit"),
        ("--comment", "c" * 2001, "--comment is 2001 characters long, over the 2000 limit"),
    ],
)
def test_a_review_is_validated_before_anything_is_sent(
    nowhere: dict[str, str], option: str, value: str, problem: str
) -> None:
    review = {"--gate": "deploy", "--reviewer": "erin", "--comment": "fine"} | {option: value}
    args = [part for pair in review.items() for part in pair]
    result = quantum(nowhere, "review", "pipeline-x", "--approve", *args, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr  # 1 would mean it tried to reach Temporal
    assert one_line_error(result) == f"error: {problem}"


def test_no_command_shows_the_help(nowhere: dict[str, str]) -> None:
    result = quantum(nowhere, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Usage" in result.stdout + result.stderr
    helped = quantum(nowhere, "review", "--help", timeout=60)
    assert helped.returncode == 0 and "--reviewer" in helped.stdout and not helped.stderr


# --- what a command talks to does not answer: exit 1 ------------------------------------------------------------


def a_valid_event(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "specversion": "1.0",
                "id": "e1",
                "source": "t",
                "type": "quantum.review.submitted",
                "data": {"pipeline_id": "pipeline-x", "gate": "deploy", "reviewer": "bob", "approved": True},
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("args", "service"),
    [
        (["pipeline", "status", "pipeline-x"], "Temporal at 127.0.0.1:"),
        (["pipeline", "list"], "Temporal at 127.0.0.1:"),
        (["pipeline", "cancel", "pipeline-x"], "Temporal at 127.0.0.1:"),
        (["review", "pipeline-x", "--gate", "deploy", "--approve", "--reviewer", "bob"], "Temporal at 127.0.0.1:"),
        (["bridge"], "Temporal at 127.0.0.1:"),
        (["pipeline", "request", "--prompt", "a slugify helper", "--no-follow"], "NATS at nats://127.0.0.1:"),
        (["dlq", "list"], "NATS at nats://127.0.0.1:"),
        (["dlq", "replay", "1"], "NATS at nats://127.0.0.1:"),
        (["events", "tail"], "NATS at nats://127.0.0.1:"),
        (["events", "publish", "EVENT"], "NATS at nats://127.0.0.1:"),
    ],
)
def test_an_unreachable_service_is_one_line_and_exit_1(
    nowhere: dict[str, str], tmp_path: Path, args: list[str], service: str
) -> None:
    args = [str(a_valid_event(tmp_path / "event.json")) if arg == "EVENT" else arg for arg in args]
    result = quantum(nowhere, *args, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    line = one_line_error(result)
    assert service in line and "does not answer" in line


@pytest.mark.parametrize(
    ("variable", "value", "args", "named"),
    [
        ("QUANTUM_TEMPORAL_ADDRESS", "not an address", ["pipeline", "list"], "Temporal at not an address"),
        ("QUANTUM_NATS_URL", "nats://no such host", ["dlq", "list"], "NATS at nats://no such host"),
        ("QUANTUM_METRICS_PORT", "many", ["pipeline", "list"], "QUANTUM_METRICS_PORT"),
        ("QUANTUM_BRIDGE_BATCH", "0", ["dlq", "list"], "QUANTUM_BRIDGE_BATCH"),
        ("QUANTUM_LOG_LEVEL", "LOUD", ["pipeline", "list"], "QUANTUM_LOG_LEVEL"),
    ],
)
def test_bad_settings_are_one_line_and_exit_1(
    nowhere: dict[str, str], variable: str, value: str, args: list[str], named: str
) -> None:
    result = quantum(nowhere | {variable: value}, *args, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert named in one_line_error(result)


def test_a_password_in_the_nats_url_is_not_shown(nowhere: dict[str, str]) -> None:
    url = nowhere["QUANTUM_NATS_URL"].replace("nats://", "nats://quantum:s3cret@")
    result = quantum(nowhere | {"QUANTUM_NATS_URL": url}, "dlq", "list", timeout=60)
    assert result.returncode == 1
    line = one_line_error(result)
    assert "s3cret" not in line and "nats://***@127.0.0.1:" in line


# --- files ---------------------------------------------------------------------------------------------------------


def test_files_that_cannot_be_read_or_written_are_one_line_and_exit_1(nowhere: dict[str, str], tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for args in (
        ["pipeline", "request", str(directory), "--no-follow"],
        ["events", "publish", str(directory)],
        ["demo", "--auto-approve", "--request", str(directory)],
        ["events", "schema", "--out", str(tmp_path / "schemas"), "--catalogue", str(directory)],
        ["events", "schema", "--out", str(a_file), "--catalogue", str(tmp_path / "events.md")],
    ):
        result = quantum(nowhere, *args, timeout=60)
        assert result.returncode == 1, (args, result.stdout + result.stderr)
        line = one_line_error(result)
        assert str(directory) in line or str(a_file) in line, line
