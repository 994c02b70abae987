"""Text that comes from people and events is shown as text: never parsed as markup, never sent to the terminal raw.

A reviewer called ``[/bold]``, a reason holding ``[1, 2]`` or an event whose fields are numbers, objects or lists
is shown exactly as it is; control characters (a terminal escape sequence in a comment) are shown escaped.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import string
import uuid
from pathlib import Path

import nats
from rich.console import Console

from events.dead_letters import ORIGINAL_SUBJECT_HEADER, REASON_HEADER
from events.envelope import DLQ_SUBJECT, subject_for
from quantum.views import plain, result_panel, runs_table, status_panel, summary
from tests.cli.support import quantum, quantum_env
from tests.conftest import free_port
from workflows.models import AttemptRecord, AuditEntry, CompensationRecord, RunStatusView

ODD = "[/bold]"
MARKUP = "[red]x[/red] :smile:"


def rendered(renderable: object) -> str:
    """What a console with every interpretation switched on (markup, emoji, highlighting) prints."""
    out = io.StringIO()
    Console(file=out, width=240, color_system=None, markup=True, emoji=True, highlight=True).print(renderable)
    return out.getvalue()


def odd_view() -> RunStatusView:
    return RunStatusView(
        pipeline_id="pipeline-[b]1[/b]",
        workflow="DevSecOpsPipelineWorkflow",
        status="failed",
        pending_gate="[gate]",
        stages={"generate_code": "succeeded", "[stage]": "failed"},
        compensations=[CompensationRecord(step="[step]", outcome="failed", error="[/] broke :boom:")],
        audit=[
            AuditEntry(gate="deploy", reviewer=ODD, approved=False, comment=MARKUP, accepted=False, reason="[why]"),
            AuditEntry(gate="deploy", reviewer="erin", approved=True, comment="\x1b[2Jgone", accepted=True),
        ],
        audit_dropped=3,
        error="[bold]it failed[/] :x:",
        warnings=["[yellow]careful[/]"],
        outputs={"deployment_url": "http://[::1]:8080/[x]", "[gate]_gate_reason": "[because]", "coverage": 91.5},
        attempts=[
            AttemptRecord(attempt=1, provider="openai-compatible", model="[m]", outcome="failed", error="[/i] :x:"),
            AttemptRecord(attempt=2, provider="openai-compatible", model="[m]", outcome="passed", prompt_tokens=7),
        ],
    )


def test_the_views_show_every_string_literally() -> None:
    text = rendered(result_panel(odd_view(), "http://[ui]", "[ns]"))
    for literal in (
        "pipeline-[b]1[/b]",
        "[gate]",
        "[because]",
        "[stage]",
        "[step]",
        "[/] broke :boom:",
        ODD,
        MARKUP,
        "[why]",
        "[bold]it failed[/] :x:",
        "[yellow]careful[/]",
        "http://[::1]:8080/[x]",
        "http://[ui]/namespaces/[ns]/workflows/pipeline-[b]1[/b]",
        "3 earlier refused reviews",
        "[m]",
        "[/i] :x:",
    ):
        assert literal in text, literal
    assert "\x1b" not in text and "\\x1b[2Jgone" in text


def test_the_live_table_the_summary_and_the_run_list_show_strings_literally() -> None:
    assert "[bold]it failed[/] :x:" in rendered(status_panel(odd_view()))
    assert "http://[::1]:8080/[x]" in rendered(summary(odd_view(), None, "default"))
    listed = rendered(runs_table([(ODD, "[type]", "running", "2026-01-01 00:00:00")]))
    assert ODD in listed and "[type]" in listed


def test_plain_escapes_control_characters_and_shows_any_value_as_text() -> None:
    assert plain("a\x1b[31mb\x00").plain == "a\\x1b[31mb\\x00"
    assert plain("two\nlines").plain == "two\nlines"
    assert plain("two\nlines", one_line=True).plain == "two\\nlines"
    assert plain(None).plain == ""
    assert plain({"a": [1, "[b]"]}).plain == '{"a": [1, "[b]"]}'
    assert plain(7).plain == "7"
    assert plain("\u202egnp.exe").plain == "\\u202egnp.exe"
    assert plain("lone \udcff").plain == "lone \\udcff"


# --- the bus, on the session's real nats-server ------------------------------------------------------------------


async def publish_raw(url: str, subject: str, payloads: list[bytes], headers: dict[str, str] | None = None) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for payload in payloads:
            await js.publish(subject, payload, headers=headers)
    finally:
        await nc.close()


def test_dlq_list_shows_reasons_and_subjects_literally(nats_url: str, tmp_path: Path) -> None:
    reason = f"InvalidEvent: data.reviewer: [bold]Field required[/] in {[1, 2]} :warning: {uuid.uuid4()}"
    headers = {REASON_HEADER: reason, ORIGINAL_SUBJECT_HEADER: "quantum.events.[odd]"}
    asyncio.run(publish_raw(nats_url, DLQ_SUBJECT, [b"{}"], headers))
    env = quantum_env(tmp_path / "data", free_port(), int(nats_url.rsplit(":", 1)[1]), free_port())
    env["COLUMNS"] = "400"
    listed = quantum(env, "dlq", "list", timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert reason in listed.stdout and "quantum.events.[odd]" in listed.stdout


def test_events_tail_survives_events_of_any_shape(nats_url: str, tmp_path: Path) -> None:
    noun = "odd" + "".join(random.choices(string.ascii_lowercase, k=10))
    odd_events: list[object] = [
        [1, 2, 3],
        {"type": "quantum.stage.failed", "time": 1234567890, "data": {"pipeline_id": {"a": [1]}, "stage": 7}},
        {"type": "[bold]quantum.stage.failed[/]", "data": "[/] not an object"},
        {"type": None, "data": [1, "[x]"], "time": ["2026-01-01T00:00:00.123456Z"]},
        {"type": "quantum.stage.failed", "data": {"pipeline_id": "pipeline-[b]", "stage": "[s] :smile:"}},
        None,
        "just a string",
        {"type": 5, "time": {"at": "[noon]"}, "data": {"gate": ["[deploy]"]}},
        {"type": "quantum.stage.failed", "data": {"pipeline_id": "pipeline-\ud800", "stage": "\u202e[s]"}},
    ]
    payloads = [json.dumps(event).encode() for event in odd_events] + [b"\xff\xfe not json \x1b[2J"]
    asyncio.run(publish_raw(nats_url, subject_for(f"quantum.{noun}.seen"), payloads))
    env = quantum_env(tmp_path / "data", free_port(), int(nats_url.rsplit(":", 1)[1]), free_port())
    tailed = quantum(
        env, "events", "tail", "--all", "--type", f"{noun}.seen", "--limit", str(len(payloads)), timeout=60
    )
    assert tailed.returncode == 0, tailed.stderr
    assert "Traceback" not in tailed.stderr
    lines = tailed.stdout.splitlines()
    assert len(lines) == len(payloads), tailed.stdout
    assert "[1, 2, 3]" in lines[0]
    assert "1234567890" in lines[1] and '{"a": [1]}' in lines[1] and lines[1].rstrip().endswith("7")
    assert "[bold]quantum.stage.failed[/]" in lines[2]
    assert "[s] :smile:" in lines[4] and "pipeline-[b]" in lines[4]
    assert "just a string" in lines[6]
    assert "[noon]" in lines[7] and "[deploy]" in lines[7]
    assert "pipeline-\\ud800" in lines[8] and "\\u202e[s]" in lines[8]
    assert "\x1b" not in tailed.stdout and "\\x1b[2J" in lines[9]
