"""QSecure: static security scanning of the generated code with bandit.

Severity mapping: bandit reports a severity and a confidence, each LOW, MEDIUM or HIGH. A finding is CRITICAL when
bandit rates it HIGH severity with at least MEDIUM confidence (``subprocess`` with ``shell=True`` on a variable,
``eval``, ``pickle``/``yaml.load`` on input...); otherwise it keeps bandit's severity. Criticals open the pipeline's
``security`` gate.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from temporalio import activity

from agents.errors import INVALID_REQUEST, TOOL_FAILURE, failure
from agents.models import Finding, ScanInput, ScanReport
from agents.workspace import Workspaces, files_under

FINDINGS = Counter(
    "quantum_agent_security_findings_total", "Security findings by tool and severity", ["tool", "severity"]
)
SCAN_TIMEOUT_SECONDS = 300


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
        src = self.workspaces.src(inp.run_id)
        files = files_under(src)
        if not files:
            raise failure(INVALID_REQUEST, f"no code to scan for {inp.run_id}")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bandit",
            "-r",
            str(src),
            "-f",
            "json",
            "-q",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), SCAN_TIMEOUT_SECONDS)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise failure(TOOL_FAILURE, f"bandit did not finish within {SCAN_TIMEOUT_SECONDS} s") from None
        try:
            report = json.loads(out)
        except json.JSONDecodeError:
            raise failure(
                TOOL_FAILURE, f"bandit gave no JSON report (exit {proc.returncode}): {err.decode()[-500:]}"
            ) from None
        findings = [
            Finding(
                tool="bandit",
                rule_id=f"{item['test_id']}:{item['test_name']}",
                severity=severity_of(item["issue_severity"], item["issue_confidence"]),
                confidence=item["issue_confidence"],
                file=str(item["filename"]).removeprefix(str(src) + "/"),
                line=int(item["line_number"]),
                message=item["issue_text"],
            )
            for item in report.get("results", [])
        ]
        errors = report.get("errors", [])
        if errors:
            activity.logger.warning("bandit could not scan: %s", errors)
        for finding in findings:
            FINDINGS.labels("bandit", finding.severity).inc()
        return ScanReport(
            tools=["bandit"],
            scanned_files=len(files),
            findings=findings,
            criticals=sum(1 for f in findings if f.critical),
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [self.scan]
