"""QSecure: static security scanning of the generated code with bandit.

Severity mapping: bandit reports a severity and a confidence, each LOW, MEDIUM or HIGH. A finding is CRITICAL when
bandit rates it HIGH severity with at least MEDIUM confidence (``subprocess`` with ``shell=True`` on a variable,
``eval``, ``pickle``/``yaml.load`` on input...); otherwise it keeps bandit's severity. Criticals open the pipeline's
``security`` gate. The scanned code's own suppressions (``# nosec``) never count.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from temporalio import activity

from agents.errors import INVALID_REQUEST, POLICY_VIOLATION, TOOL_FAILURE, failure
from agents.models import Finding, ScanInput, ScanReport
from agents.processes import run_bounded
from agents.workspace import Workspaces, files_under

FINDINGS = Counter(
    "quantum_agent_security_findings_total", "Security findings by tool and severity", ["tool", "severity"]
)
SCAN_TIMEOUT_SECONDS = 300
MAX_REPORT_BYTES = 32 * 1024 * 1024
MAX_FINDINGS = 200
"""Findings kept in the report (all are counted in ``criticals`` and the metrics)."""


def severity_of(severity: str, confidence: str) -> str:
    if severity == "HIGH" and confidence in {"HIGH", "MEDIUM"}:
        return "CRITICAL"
    return severity


class SecurityAgent:
    """QSecure: scans the run's code and reports findings, criticals counted apart."""

    def __init__(self, workspaces: Workspaces) -> None:
        self.workspaces = workspaces

    @activity.defn(name="security.scan")
    async def scan(self, inp: ScanInput) -> ScanReport:
        """Scan every file of the run's code with bandit; a scan that did not cover every file is a failure.

        The code under scan was written by a model or a requester, so nothing in it may steer the scanner: its own
        suppressions (``# nosec``) do not count (``--ignore-nosec``), no configuration is read from it (each file is
        named on the command line, so no ``.bandit`` file is looked for), and no path is excluded (``-x ''``:
        bandit's default exclusions would skip a file under ``.tox`` or ``__pycache__``).
        """
        src = self.workspaces.src(inp.run_id)
        files = files_under(src)
        if not files:
            raise failure(INVALID_REQUEST, f"no code to scan for {inp.run_id}")
        argv = [sys.executable, "-m", "bandit", "-f", "json", "-q", "--ignore-nosec", "-x", ""]
        done = await run_bounded(
            [*argv, *(p.relative_to(src).as_posix() for p in files)],
            cwd=src,
            timeout=SCAN_TIMEOUT_SECONDS,
            max_output=MAX_REPORT_BYTES,
        )
        if done.timed_out:
            raise failure(TOOL_FAILURE, f"bandit did not finish within {SCAN_TIMEOUT_SECONDS} s")
        if done.stdout_truncated:
            raise failure(TOOL_FAILURE, f"bandit's report is over {MAX_REPORT_BYTES} bytes")
        try:
            report = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise failure(
                TOOL_FAILURE,
                f"bandit gave no JSON report (exit {done.returncode}): {done.stderr.decode(errors='replace')[-500:]}",
            ) from None
        expected = {p.relative_to(src).as_posix() for p in files}
        errors = report.get("errors", [])
        if errors:
            unscanned = "; ".join(f"{e.get('filename')}: {e.get('reason')}" for e in errors[:5])
            raise failure(
                POLICY_VIOLATION, f"bandit could not scan every file, so the scan proves nothing: {unscanned}"
            )
        scanned = {name.removeprefix("./") for name in report.get("metrics", {}) if name != "_totals"}
        if not expected <= scanned:
            missing = ", ".join(sorted(expected - scanned)[:5])
            raise failure(POLICY_VIOLATION, f"bandit skipped files, so the scan proves nothing: {missing}")
        findings = [
            Finding(
                tool="bandit",
                rule_id=f"{item['test_id']}:{item['test_name']}",
                severity=severity_of(item["issue_severity"], item["issue_confidence"]),
                confidence=item["issue_confidence"],
                file=str(item["filename"]).removeprefix("./"),
                line=int(item["line_number"]),
                message=str(item["issue_text"])[:500],
            )
            for item in report.get("results", [])
        ]
        for finding in findings:
            FINDINGS.labels("bandit", finding.severity).inc()
        return ScanReport(
            tools=["bandit"],
            scanned_files=len(files),
            findings=findings[:MAX_FINDINGS],
            criticals=sum(1 for f in findings if f.critical),
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [self.scan]
