"""A real Prometheus scraping the catalogue's metrics, for the dashboards' queries to run against."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from prometheus_client import start_http_server

from tests.conftest import free_port
from tests.observability.catalogue import Exposition

SCRAPES_PER_STEP = 2
WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Prometheus:
    url: str
    targets: int

    def get(self, path: str, **params: str) -> Any:
        """The ``data`` of a Prometheus API answer; an error answer raises with Prometheus' message."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:  # noqa: S310 - loopback
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{path} {params}: {err.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def scrapes(self) -> int:
        """How often the least scraped target has been scraped successfully in the last minute."""
        try:
            result = self.query(f"min(count_over_time(up[1m]) and up == 1) and count(up == 1) == {self.targets}")
        except (OSError, AssertionError):
            return 0
        return int(result[0]["value"][1]) if result else 0

    def wait_for_scrapes(self, at_least: int) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while self.scrapes() < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus did not scrape every target {at_least} times in {WAIT_SECONDS}s")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus scraping the worker's and the bridge's metrics every second, each series having moved twice."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian's prometheus package)")
    tmp = tmp_path_factory.mktemp("prometheus")
    exposition = Exposition()
    exposition.step()
    with contextlib.ExitStack() as stack:
        jobs = []
        for job, registry in exposition.registries.items():
            port = free_port()
            http, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
            stack.callback(http.server_close)
            stack.callback(http.shutdown)  # first: exit callbacks run last in, first out
            jobs.append({"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]})
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
        port = free_port()
        log = stack.enter_context((tmp / "prometheus.log").open("w"))
        proc = stack.enter_context(
            subprocess.Popen(  # noqa: S603 - a fixed argv
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        )
        stack.callback(proc.terminate)  # runs before Popen's exit, which waits for it
        server = Prometheus(f"http://127.0.0.1:{port}", len(jobs))
        server.wait_for_scrapes(SCRAPES_PER_STEP)
        exposition.step()
        server.wait_for_scrapes(server.scrapes() + SCRAPES_PER_STEP)
        yield server
