"""The embedded Prometheus: Debian's ``prometheus``, scraping the product's processes, the Temporal dev server and
each deployment, with the product's alert rules.

Where everything is, under ``<data>/monitoring/prometheus/``::

    stack.yml              the configuration written at each start (the one this Prometheus runs)
    quantum-alerts.yml     the product's alert rules (``quantum/observability/alerts.py``)
    processes/<job>-<pid>.json   each quantum process serving /metrics (written when it starts, removed when it stops)
    targets/<release>.json       each deployment's target, written by QSRE (``agents/sre.py``)
    rules/<release>.yml          each deployment's alert rules, written by QSRE
    data/                  the time series

Targets come through file-based discovery, so a process or a deployment that appears later is scraped without a
restart; rule files are read when Prometheus starts and when it is told to reload (``reload``).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import yaml

from agents.processes import ProcessIdentity
from quantum.observability.alerts import rule_file_yaml
from quantum.stack.probes import join_host_port
from quantum.stack.process import ServerProcess

SCRAPE_INTERVAL = "5s"
RETENTION = "7d"
PROCESSES = "processes"
PROBE_TIMEOUT = 2.0
RULES_CHECK_SECONDS = 10.0


def prometheus_dir(data: Path) -> Path:
    return data / "monitoring" / "prometheus"


def temporal_metrics_address(argv: list[str]) -> str | None:
    """Where a ``temporal server start-dev`` command line serves its own metrics (``--ip``, ``--metrics-port``)."""

    def value(flag: str) -> str | None:
        return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None

    port = value("--metrics-port")
    return join_host_port(value("--ip") or "127.0.0.1", int(port)) if port and port.isdigit() else None


def stack_config(data: Path, *, temporal_metrics: str | None, interval: str = SCRAPE_INTERVAL) -> dict[str, Any]:
    """The configuration of the embedded Prometheus (absolute paths: it runs with another working directory)."""
    home = prometheus_dir(data).resolve()
    scrape: list[dict[str, Any]] = [
        {
            "job_name": "quantum",
            "file_sd_configs": [{"files": [str(home / PROCESSES / "*.json")], "refresh_interval": interval}],
        },
        {
            "job_name": "quantum-deployments",
            "file_sd_configs": [{"files": [str(home / "targets" / "*.json")], "refresh_interval": "30s"}],
        },
    ]
    if temporal_metrics:
        scrape.append({"job_name": "temporal", "static_configs": [{"targets": [temporal_metrics]}]})
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(home / "quantum-alerts.yml"), str(home / "rules" / "*.yml")],
        "scrape_configs": scrape,
    }


def write_config(data: Path, *, temporal_metrics: str | None, interval: str = SCRAPE_INTERVAL) -> Path:
    """Write the configuration (scrapes and rule evaluations every ``interval``) and the product's alert rules;
    return the configuration's path."""
    home = prometheus_dir(data)
    (home / PROCESSES).mkdir(parents=True, exist_ok=True)
    (home / "quantum-alerts.yml").write_text(rule_file_yaml(), encoding="utf-8")
    config = home / "stack.yml"
    text = yaml.safe_dump(stack_config(data, temporal_metrics=temporal_metrics, interval=interval), sort_keys=False)
    config.write_text(text)
    return config


class ProcessTarget:
    """This process's ``/metrics`` as a scrape target of the embedded Prometheus, for as long as it serves it.

    The file is named after the job and the pid; files of processes that no longer run are removed when another
    registers (a process killed with ``kill -9`` leaves its file behind).
    """

    def __init__(self, data: Path, job: str, address: str) -> None:
        self.directory = prometheus_dir(data) / PROCESSES
        self.path = self.directory / f"{job}-{os.getpid()}.json"
        self.job = job
        self.address = address

    def __enter__(self) -> ProcessTarget:
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.json"):
            pid = stale.stem.rpartition("-")[2]
            if pid.isdigit() and ProcessIdentity.of(int(pid)) is None:
                stale.unlink(missing_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps([{"targets": [self.address], "labels": {"job": self.job}}]))
        partial.replace(self.path)  # file discovery never reads half a file
        return self

    def __exit__(self, *_: object) -> None:
        self.path.unlink(missing_ok=True)


class PrometheusServer:
    """Debian's ``prometheus`` on ``host:port`` with the configuration of :func:`write_config`.

    Args:
        binary: The ``prometheus`` program.
        host: Host to serve on.
        port: Port of its web UI and API.
        data: The stack's data directory.
        log_file: Where its output goes (appended).
        record_file: Where to keep its run record while it runs.
    """

    def __init__(
        self, *, binary: str, host: str, port: int, data: Path, log_file: Path, record_file: Path | None = None
    ) -> None:
        self.host = host
        self.port = port
        home = prometheus_dir(data).resolve()
        argv = [
            binary,
            f"--config.file={home / 'stack.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address={join_host_port(host, port)}",
            "--web.enable-lifecycle",
        ]
        self._process = ServerProcess(
            "Prometheus", argv, log_file, record_file=record_file, record_name="prometheus", address=self.url
        )

    @property
    def url(self) -> str:
        return f"http://{join_host_port(self.host, self.port)}"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    async def start(self, timeout: float = 30) -> None:
        await self._process.start(lambda: prometheus_ready(self.url), timeout)

    async def stop(self, timeout: float = 10) -> None:
        await self._process.stop(timeout)


async def _answers_ok(method: str, url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
            return (await client.request(method, url)).status_code == 200
    except httpx.HTTPError:
        return False


async def prometheus_ready(url: str) -> bool:
    """Whether a Prometheus at ``url`` says it is ready."""
    return await _answers_ok("GET", f"{url}/-/ready")


def _rules_signature(data: Path) -> tuple[tuple[str, float], ...]:
    rules = prometheus_dir(data) / "rules"
    try:
        return tuple(sorted((f.name, f.stat().st_mtime) for f in rules.glob("*.yml")))
    except OSError:
        return ()


async def reload_when_rules_change(url: str, data: Path, *, interval: float = RULES_CHECK_SECONDS) -> None:
    """Tell the Prometheus at ``url`` to reload whenever a deployment's rule file appears, changes or goes (rule
    files, unlike targets, are read only at a reload). Runs until cancelled."""
    seen = _rules_signature(data)
    while True:
        await asyncio.sleep(interval)
        now = _rules_signature(data)
        if now != seen and await reload(url):
            seen = now


async def reload(url: str) -> bool:
    """Ask the Prometheus at ``url`` to read its configuration and rule files again."""
    return await _answers_ok("POST", f"{url}/-/reload")
