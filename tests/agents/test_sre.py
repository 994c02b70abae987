"""QSRE: the per-deployment Prometheus target, promtool-checked alert rules, Grafana dashboard and their teardown.

Every check that Prometheus would make is made by the real ``promtool`` (Debian's ``prometheus`` package, installed
by ``make system-deps`` and ``.ci/run``): the rule files pass ``promtool check rules``, the scrape configuration
``promtool check config``, and a unit test run by ``promtool test rules`` shows that hostile names come out of
the alert's labels and annotations exactly as they went in.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from agents import sre as sre_module
from agents.models import MonitoringInput, RunRef
from agents.sre import SREAgent, dashboard_uid, promql_string

env = ActivityEnvironment()
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed: run make system-deps")

RICH_METRICS = """\
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{code="200",path="/"} 7
http_requests_total{code="500",path="/"} 1
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1"} 7
http_request_duration_seconds_bucket{le="+Inf"} 8
http_request_duration_seconds_sum 0.9
http_request_duration_seconds_count 8
"""

HOSTILE_RUN_ID = 'run "x"} or up{job=~".+"} $__rate_interval [[v]] ${v}\n{{ query "up" }}\\'
HOSTILE_PROJECT = 'shop\'s "app" {{ .Value }} }}\n{{ range'
HOSTILE_ENVIRONMENT = "dev}\n{{"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


# What the release host (agents/release_server.py) serves before it answered a request.
RELEASE_METRICS = """\
# HELP quantum_release_up Whether the release is serving.
# TYPE quantum_release_up gauge
quantum_release_up{release="r1",kind="service"} 1
# TYPE quantum_release_requests_total counter
"""


@contextlib.contextmanager
def serving(metrics: str) -> Iterator[str]:
    """A loopback HTTP server answering every GET with ``metrics``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            body = metrics.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def release_url() -> Iterator[str]:
    with serving(RELEASE_METRICS) as url:
        yield url


@pytest.fixture
def rich_url() -> Iterator[str]:
    """A service whose metrics give a request rate, an error rate (a status code label) and a latency histogram."""
    with serving(RICH_METRICS) as url:
        yield url


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def check_as_rules(tmp_path: Path, expressions: list[str]) -> subprocess.CompletedProcess[str]:
    """Dashboard queries checked as PromQL by promtool (Grafana's ``$__rate_interval`` read as 5m)."""
    rules = [
        {"record": f"quantum:check:{i}", "expr": e.replace("$__rate_interval", "5m")} for i, e in enumerate(expressions)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    return promtool("check", "rules", str(path))


@needs_promtool
async def test_setup_writes_checked_rules_a_dashboard_a_target_and_the_provisioning(
    tmp_path: Path, release_url: str
) -> None:
    agent = SREAgent(tmp_path / "monitoring", promtool=str(PROMTOOL))
    setup = await env.run(
        agent.setup_monitoring,
        MonitoringInput(run_id="pipeline-1", project="shop", environment="dev", deployment_url=release_url),
    )
    targets, rules, dashboard = (Path(f) for f in setup.files)
    root = tmp_path / "monitoring"
    assert targets.parent == root / "prometheus" / "targets" and targets.suffix == ".json"
    assert rules.parent == root / "prometheus" / "rules" and rules.suffix == ".yml"
    assert dashboard.parent == root / "grafana" / "dashboards" and dashboard.suffix == ".json"
    assert setup.rules_checked and setup.warnings == []

    host_port = release_url.removeprefix("http://")
    target = json.loads(targets.read_text())
    assert target == [
        {"targets": [host_port], "labels": {"project": "shop", "environment": "dev", "run_id": "pipeline-1"}}
    ]

    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "QuantumReleaseDown" in rules.read_text()

    board = json.loads(dashboard.read_text())
    assert board["uid"] == setup.dashboard_uid == dashboard_uid("pipeline-1")
    assert "shop" in board["title"] and "dev" in board["title"] and "shop" in board["tags"]
    titles = [panel["title"] for panel in board["panels"]]
    assert titles == ["Up", "Health", "Request rate", "Error rate"]  # the release host measures no latency
    assert setup.panels == ["up", "health", "request rate", "error rate"]
    assert 'up{run_id="pipeline-1"}' in exprs(board)
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in board["panels"])
    assert check_as_rules(tmp_path, exprs(board)).returncode == 0

    # the provisioning reads exactly this layout
    prometheus_yml, provider_yml = (Path(p) for p in setup.provisioning)
    assert prometheus_yml == root / "prometheus" / "prometheus.yml"
    config = promtool("check", "config", str(prometheus_yml))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 3 rules found" in config.stdout  # the rule file, found through rule_files
    sd = yaml.safe_load(prometheus_yml.read_text())["scrape_configs"][0]["file_sd_configs"][0]["files"][0]
    assert targets in [p for p in Path(sd).parent.glob(Path(sd).name)]
    assert provider_yml == root / "grafana" / "provisioning" / "dashboards" / "quantum.yml"
    provider = yaml.safe_load(provider_yml.read_text())["providers"][0]
    assert provider["type"] == "file" and Path(provider["options"]["path"]) == dashboard.parent.resolve()

    # a retried set-up writes the same files
    again = await env.run(
        agent.setup_monitoring,
        MonitoringInput(run_id="pipeline-1", project="shop", environment="dev", deployment_url=release_url),
    )
    assert again.files == setup.files and json.loads(dashboard.read_text()) == board


@needs_promtool
async def test_error_rate_and_latency_when_the_service_exposes_them(tmp_path: Path, rich_url: str) -> None:
    agent = SREAgent(tmp_path / "monitoring", promtool=str(PROMTOOL))
    setup = await env.run(
        agent.setup_monitoring,
        MonitoringInput(run_id="pipeline-2", project="shop", environment="staging", deployment_url=rich_url),
    )
    assert setup.panels == ["up", "request rate", "error rate", "latency p95"]
    rules = Path(setup.files[1]).read_text()
    assert "QuantumReleaseHighErrorRate" in rules and "QuantumReleaseHighLatency" in rules
    assert promtool("check", "rules", setup.files[1]).returncode == 0
    board = json.loads(Path(setup.files[2]).read_text())
    assert [p["title"] for p in board["panels"]] == ["Up", "Request rate", "Error rate", "Latency p95"]
    queries = exprs(board)
    assert any('code=~"5.."' in q for q in queries)
    assert any("histogram_quantile(0.95" in q and "http_request_duration_seconds_bucket" in q for q in queries)
    assert check_as_rules(tmp_path, queries).returncode == 0


@needs_promtool
async def test_hostile_names_break_neither_the_rules_nor_the_promql_nor_the_dashboard(
    tmp_path: Path, rich_url: str
) -> None:
    agent = SREAgent(tmp_path / "monitoring", promtool=str(PROMTOOL))
    setup = await env.run(
        agent.setup_monitoring,
        MonitoringInput(
            run_id=HOSTILE_RUN_ID, project=HOSTILE_PROJECT, environment=HOSTILE_ENVIRONMENT, deployment_url=rich_url
        ),
    )
    targets, rules, dashboard = (Path(f) for f in setup.files)
    assert setup.rules_checked
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # the file_sd labels are the names as they are
    labels = json.loads(targets.read_text())[0]["labels"]
    assert labels == {"project": HOSTILE_PROJECT, "environment": HOSTILE_ENVIRONMENT, "run_id": HOSTILE_RUN_ID}

    # every query selects this run only: the run id is one string literal, whatever it holds
    groups = yaml.safe_load(rules.read_text())["groups"]
    for rule in groups[0]["rules"]:
        assert f"{{run_id={promql_string(HOSTILE_RUN_ID)}" in rule["expr"]
        assert 'job=~".+"}' not in rule["expr"].replace(promql_string(HOSTILE_RUN_ID), "")

    # Prometheus expands the alert's labels and annotations back to the very names (a promtool rule unit test)
    target = json.loads(targets.read_text())[0]["targets"][0]
    series = f'up{{run_id={promql_string(HOSTILE_RUN_ID)},instance={promql_string(target)},job="quantum"}}'
    summary = f"Release of {HOSTILE_PROJECT} ({HOSTILE_ENVIRONMENT}) at {target} is down"
    unit = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series, "values": "0 0 0"},
                    {"series": 'up{run_id="another run",job="quantum"}', "values": "0 0 0"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "2m",
                        "alertname": "QuantumReleaseDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "project": HOSTILE_PROJECT,
                                    "environment": HOSTILE_ENVIRONMENT,
                                    "run_id": HOSTILE_RUN_ID,
                                    "instance": target,
                                    "job": "quantum",
                                },
                                "exp_annotations": {"summary": summary},
                            }
                        ],
                    }
                ],
            }
        ],
    }
    unit_file = tmp_path / "unit.yml"
    unit_file.write_text(yaml.safe_dump(unit, allow_unicode=True))
    tested = promtool("test", "rules", str(unit_file))
    assert tested.returncode == 0, tested.stdout + tested.stderr

    # the dashboard: valid JSON naming the service, its queries valid PromQL with no Grafana variable but its own
    board = json.loads(dashboard.read_text())
    assert HOSTILE_PROJECT in board["title"] and HOSTILE_PROJECT in board["tags"]
    assert HOSTILE_RUN_ID in board["description"]
    assert [p["title"] for p in board["panels"]] == ["Up", "Request rate", "Error rate", "Latency p95"]
    for query in exprs(board):
        assert promql_string(HOSTILE_RUN_ID) in query
        bare = query.replace("$__rate_interval", "")
        assert "$" not in bare and "[[" not in bare
    assert check_as_rules(tmp_path, exprs(board)).returncode == 0

    torn = await env.run(agent.teardown_monitoring, RunRef(run_id=HOSTILE_RUN_ID))
    assert sorted(torn.removed) == sorted(setup.files)


@needs_promtool
async def test_teardown_removes_exactly_that_deployments_files(tmp_path: Path, release_url: str) -> None:
    agent = SREAgent(tmp_path / "monitoring", promtool=str(PROMTOOL))
    mine = await env.run(
        agent.setup_monitoring,
        MonitoringInput(run_id="coll:2", project="shop", environment="dev", deployment_url=release_url),
    )
    other = await env.run(
        agent.setup_monitoring,
        MonitoringInput(run_id="coll_2", project="shop", environment="dev", deployment_url=release_url),
    )
    assert not set(mine.files) & set(other.files)

    torn = await env.run(agent.teardown_monitoring, RunRef(run_id="coll:2"))
    assert sorted(torn.removed) == sorted(mine.files)
    assert not any(Path(f).exists() for f in mine.files)
    assert all(Path(f).is_file() for f in other.files)
    assert all(Path(f).is_file() for f in mine.provisioning)  # shared: other deployments are read through them
    assert (await env.run(agent.teardown_monitoring, RunRef(run_id="coll:2"))).removed == []

    # a dashboard that is not this run's (another uid) is refused, and nothing is removed
    board = Path(other.files[2])
    board.write_text(json.dumps({"uid": "someone-else", "panels": []}))
    with pytest.raises(ApplicationError) as info:
        await env.run(agent.teardown_monitoring, RunRef(run_id="coll_2"))
    assert info.value.type == "UnsafeArtifact"
    assert all(Path(f).is_file() for f in other.files)


async def test_teardown_removes_files_an_earlier_version_wrote(tmp_path: Path) -> None:
    root = tmp_path / "monitoring"
    agent = SREAgent(root)
    legacy_target, legacy_rules = agent._legacy_paths("old-run")
    legacy_target.parent.mkdir(parents=True)
    legacy_rules.parent.mkdir(parents=True)
    legacy_target.write_text(json.dumps([{"targets": ["127.0.0.1:1"], "labels": {"run_id": "old-run"}}]))
    legacy_rules.write_text("groups: []\n")
    torn = await env.run(agent.teardown_monitoring, RunRef(run_id="old-run"))
    assert sorted(torn.removed) == sorted([str(legacy_target), str(legacy_rules)])


async def test_missing_promtool_is_a_warning_not_a_pretended_check(tmp_path: Path, release_url: str) -> None:
    agent = SREAgent(tmp_path / "monitoring", promtool=str(tmp_path / "no-such-promtool"))
    setup = await env.run(
        agent.setup_monitoring,
        MonitoringInput(run_id="pipeline-3", project="shop", environment="dev", deployment_url=release_url),
    )
    assert not setup.rules_checked
    assert len(setup.warnings) == 1 and "promtool not found" in setup.warnings[0]
    assert "unchecked" in setup.warnings[0] and "QUANTUM_PROMTOOL_BIN" in setup.warnings[0]
    assert all(Path(f).is_file() for f in setup.files)


@needs_promtool
async def test_rules_promtool_refuses_fail_the_setup_with_its_message(
    tmp_path: Path, release_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = "groups:\n- name: x\n  rules:\n  - alert: A\n    expr: up ==\n"
    monkeypatch.setattr(sre_module, "alert_rules", lambda *args, **kwargs: broken)
    agent = SREAgent(tmp_path / "monitoring", promtool=str(PROMTOOL))
    with pytest.raises(ApplicationError) as info:
        await env.run(
            agent.setup_monitoring,
            MonitoringInput(run_id="pipeline-4", project="shop", environment="dev", deployment_url=release_url),
        )
    assert info.value.type == "UnsafeArtifact" and info.value.non_retryable
    assert "promtool check rules refused the rule file" in str(info.value)
    assert "parse error" in str(info.value)  # promtool's own words
    assert not any((tmp_path / "monitoring").rglob("pipeline-4*"))  # nothing half set up
