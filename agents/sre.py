"""QSRE: monitoring for a deployment: a Prometheus file_sd scrape target and alert rules for it.

Prometheus picks up ``targets/*.json`` through ``file_sd_configs`` and ``rules/*.yml`` through ``rule_files``;
the set-up scrapes the target once first, so a target that serves no metrics is refused.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from temporalio import activity

from agents.errors import TOOL_FAILURE, UNSAFE_ARTIFACT, failure
from agents.models import CleanupResult, MonitoringInput, MonitoringSetup, RunRef
from agents.workspace import run_dir_name

MAX_SCRAPE_BYTES = 4 * 1024 * 1024


def promql_string(value: str) -> str:
    """``value`` as a PromQL double-quoted string literal (backslash, quote and control characters escaped)."""
    escaped = []
    for ch in value:
        if ch in {"\\", '"'}:
            escaped.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            escaped.append(f"\\x{ord(ch):02x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def alert_rules(name: str, *, run_id: str, project: str, environment: str, target: str) -> str:
    """The Prometheus rule file of one release, as YAML written by a YAML library (every value quoted for it)."""
    rules = {
        "groups": [
            {
                "name": f"quantum-{name}",
                "rules": [
                    {
                        "alert": "QuantumReleaseDown",
                        "expr": f"up{{run_id={promql_string(run_id)}}} == 0",
                        "for": "1m",
                        "labels": {"severity": "critical", "project": project, "environment": environment},
                        "annotations": {"summary": f"Release of {project} ({environment}) at {target} is down"},
                    }
                ],
            }
        ]
    }
    text: str = yaml.safe_dump(rules, sort_keys=False, allow_unicode=True)
    return text


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:  # noqa: S310 - our own loopback URL
        body: bytes = resp.read(MAX_SCRAPE_BYTES)
        return body.decode(errors="replace")


class SREAgent:
    """QSRE: writes and removes the monitoring files of a run under ``monitoring_dir``."""

    def __init__(self, monitoring_dir: Path) -> None:
        self.monitoring_dir = monitoring_dir

    def _paths(self, run_id: str) -> tuple[Path, Path]:
        name = run_dir_name(run_id)
        return self.monitoring_dir / "targets" / f"{name}.json", self.monitoring_dir / "rules" / f"{name}.yml"

    def _owner(self, targets: Path) -> str | None:
        """The run id a target file was written for (its ``run_id`` label); None when unreadable."""
        try:
            entries = json.loads(targets.read_text())
            return str(entries[0]["labels"]["run_id"])
        except (OSError, ValueError, LookupError, TypeError):
            return None

    @activity.defn(name="sre.setup_monitoring")
    async def setup_monitoring(self, inp: MonitoringInput) -> MonitoringSetup:
        try:
            text = await asyncio.to_thread(scrape, inp.deployment_url)
        except OSError as err:
            raise failure(TOOL_FAILURE, f"cannot scrape {inp.deployment_url}/metrics: {err}") from None
        if "# TYPE" not in text:
            raise failure(TOOL_FAILURE, f"{inp.deployment_url}/metrics serves no Prometheus metrics")
        target = urlparse(inp.deployment_url).netloc
        targets, rules = self._paths(inp.run_id)
        targets.parent.mkdir(parents=True, exist_ok=True)
        rules.parent.mkdir(parents=True, exist_ok=True)
        labels = {"project": inp.project, "environment": inp.environment, "run_id": inp.run_id}
        targets.write_text(json.dumps([{"targets": [target], "labels": labels}], indent=2) + "\n")
        rules.write_text(
            alert_rules(
                targets.stem, run_id=inp.run_id, project=inp.project, environment=inp.environment, target=target
            )
        )
        return MonitoringSetup(target=target, files=[str(targets), str(rules)], scrape_ok=True)

    @activity.defn(name="sre.teardown_monitoring")
    async def teardown_monitoring(self, ref: RunRef) -> CleanupResult:
        """Remove the run's target and rules (compensation): only files written for this very run."""
        targets, _ = self._paths(ref.run_id)
        if targets.exists() and self._owner(targets) != ref.run_id:
            raise failure(UNSAFE_ARTIFACT, f"the monitoring target {targets.name} is not this run's: nothing removed")
        removed = []
        for path in self._paths(ref.run_id):
            if path.exists():
                path.unlink()
                removed.append(str(path))
        return CleanupResult(removed=removed)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.setup_monitoring, self.teardown_monitoring]
