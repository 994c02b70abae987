"""The alert rules: promtool accepts them, its unit tests prove each alert fires and stays quiet, runbooks exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from quantum.observability import RULES_FILE, alerts
from tests.observability.catalogue import METRICS

ROOT = Path(__file__).parents[2]
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
RUNBOOK = ROOT / "docs" / "operations.md"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)  # noqa: S603


def test_promtool_accepts_the_committed_rules() -> None:
    done = run_promtool("check", "rules", str(ROOT / RULES_FILE))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts.rules())} rules found" in done.stdout


def test_every_alert_fires_on_failing_series_and_stays_quiet_on_healthy_ones() -> None:
    done = run_promtool("test", "rules", str(UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unit_tests_expect_every_alert_to_fire() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == {rule["alert"] for rule in alerts.rules()}


def _count_rejected_runs_as_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts, "NOT_SUCCEEDED", "failed|timed_out|rejected")
    monkeypatch.setattr(alerts, "DECIDED", "succeeded|failed|timed_out|rejected")


def _use_bare_increase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts, "counted", lambda selector, window: f"(increase({selector}[{window}]))")


@pytest.mark.parametrize(
    ("change", "caught_in"),
    [
        (_count_rejected_runs_as_failures, "QuantumPipelineFailureRateHigh"),
        (_use_bare_increase, "QuantumRunsPartiallyCompensated"),
    ],
)
def test_the_unit_tests_catch_a_wrong_rule(
    change: Callable[[pytest.MonkeyPatch], None], caught_in: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Counting rejections as failures, or missing a counter's first event, fails promtool's unit tests."""
    change(monkeypatch)
    (tmp_path / "rules.yaml").write_text(alerts.rule_file_yaml())
    unit_tests = yaml.safe_load(UNIT_TESTS.read_text())
    unit_tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(unit_tests))
    done = run_promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert done.returncode != 0
    assert f"alertname: {caught_in}" in done.stdout + done.stderr


def test_every_alert_says_how_bad_and_what_happened() -> None:
    for rule in alerts.rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    anchors = github_anchors(RUNBOOK.read_text())
    for rule in alerts.rules():
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: docs/operations.md has no section #{anchor}"


def test_the_runbook_describes_every_metric() -> None:
    table = {row.split("|")[1].strip().strip("`") for row in RUNBOOK.read_text().splitlines() if row.startswith("| `")}
    assert {metric.name for metric in METRICS} <= table
