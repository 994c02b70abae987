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

from temporalio import activity

from agents.errors import TOOL_FAILURE, failure
from agents.models import CleanupResult, MonitoringInput, MonitoringSetup, RunRef
from agents.workspace import Workspaces

RULES_TEMPLATE = """groups:
  - name: quantum-{name}
    rules:
      - alert: QuantumReleaseDown
        expr: up{{run_id="{run_id}"}} == 0
        for: 1m
        labels:
          severity: critical
          project: {project}
          environment: {environment}
        annotations:
          summary: "Release of {project} ({environment}) at {target} is down"
"""


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:  # noqa: S310 - our own loopback URL
        body: bytes = resp.read()
        return body.decode()


class SREAgent:
    """QSRE: writes and removes the monitoring files of a run under ``monitoring_dir``."""

    def __init__(self, monitoring_dir: Path) -> None:
        self.monitoring_dir = monitoring_dir

    def _paths(self, run_id: str) -> tuple[Path, Path]:
        name = Workspaces(self.monitoring_dir).for_run(run_id).name
        return self.monitoring_dir / "targets" / f"{name}.json", self.monitoring_dir / "rules" / f"{name}.yml"

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
            RULES_TEMPLATE.format(
                name=targets.stem, run_id=inp.run_id, project=inp.project, environment=inp.environment, target=target
            )
        )
        return MonitoringSetup(target=target, files=[str(targets), str(rules)], scrape_ok=True)

    @activity.defn(name="sre.teardown_monitoring")
    async def teardown_monitoring(self, ref: RunRef) -> CleanupResult:
        removed = []
        for path in self._paths(ref.run_id):
            if path.exists():
                path.unlink()
                removed.append(str(path))
        return CleanupResult(removed=removed)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.setup_monitoring, self.teardown_monitoring]
