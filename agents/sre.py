"""QSRE: monitoring for a deployment: a Prometheus scrape target, alert rules and a Grafana dashboard.

The layout under ``monitoring_dir`` (``<data>/monitoring``), one file of each kind per deployment, named by
:func:`agents.workspace.run_dir_name` so that alike run ids never share a file::

    prometheus/prometheus.yml              scrape config: file_sd over targets/*.json, rule_files rules/*.yml
    prometheus/targets/<name>.json         the deployment's file_sd target, labelled project/environment/run_id
    prometheus/rules/<name>.yml            its alert rules, passed by ``promtool check rules`` before they land
    grafana/provisioning/dashboards/quantum.yml   a dashboards provider reading grafana/dashboards/
    grafana/dashboards/<name>.json         its dashboard (grafana-foundation-sdk): up, health, requests, errors, latency

The set-up scrapes the target once first: a target that serves no metrics is refused, and the dashboard and rules
use only what the scrape found (request rate, error rate, latency when the service exposes them). Every file is
written whole to a temporary name, then renamed, so Prometheus and Grafana never read half a file.

Everything that comes from a request or an event is escaped for where it lands: JSON by ``json.dumps``, YAML by
``yaml.safe_dump``, PromQL string literals by :func:`promql_string` (which also keeps Grafana's ``$var`` and
``[[var]]`` out of dashboard queries), and Prometheus' templated alert labels and annotations by
:func:`template_text`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef
from prometheus_client.parser import text_string_to_metric_families
from temporalio import activity

from agents.errors import TOOL_FAILURE, UNSAFE_ARTIFACT, failure
from agents.models import CleanupResult, MonitoringInput, MonitoringSetup, RunRef
from agents.processes import child_env
from agents.workspace import run_dir_name

MAX_SCRAPE_BYTES = 4 * 1024 * 1024
PROMTOOL_TIMEOUT_SECONDS = 60.0
MAX_PROMTOOL_MESSAGE_CHARS = 2000
RATE_WINDOW = "5m"
ERROR_RATIO_THRESHOLD = 0.05
LATENCY_P95_THRESHOLD_SECONDS = 1.0
PROVIDER_FILE = "quantum.yml"
DASHBOARD_FOLDER = "Quantum Suite"

# Metric families the dashboard and rules know, by the name the text-format parser gives them (``_total`` off).
# Only these constant names ever reach PromQL; a scraped name never does.
REQUEST_COUNTERS = ("quantum_release_requests", "http_requests", "http_server_requests")
ERROR_COUNTERS = ("quantum_release_errors", "http_request_errors", "http_server_errors")
STATUS_LABELS = ("code", "status_code", "status")
# Families whose status label is known even before a request was counted (the release host labels by ``code``).
KNOWN_STATUS_LABELS = {"quantum_release_requests": "code"}
LATENCY_FAMILIES = (
    "quantum_release_request_duration_seconds",
    "http_request_duration_seconds",
    "http_server_request_duration_seconds",
)
HEALTH_GAUGES = ("quantum_release_up",)

_PROMQL_ESCAPES = {"\\": "\\\\", '"': '\\"', "$": "\\x24", "[": "\\x5b", "]": "\\x5d"}


def promql_string(value: str) -> str:
    """``value`` as a PromQL double-quoted string literal.

    Backslash and quote are escaped, control characters written ``\\xNN``; so are ``$``, ``[`` and ``]``, which
    Grafana would otherwise read as a dashboard variable (``$x``, ``${x}``, ``[[x]]``) inside a dashboard query.
    The literal is also a valid Go string literal, which :func:`template_text` relies on.
    """
    escaped = []
    for ch in value:
        if ch in _PROMQL_ESCAPES:
            escaped.append(_PROMQL_ESCAPES[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            escaped.append(f"\\x{ord(ch):02x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def template_text(value: str) -> str:
    """``value`` for a Prometheus alert label or annotation, which Prometheus expands as a Go template.

    A value with a brace is written as a template action printing it as a string constant, so ``{{ ... }}`` in a
    project name can neither break the rule file nor run a query; a value without one is literal text already.
    """
    if "{" in value or "}" in value:
        return "{{ " + promql_string(value) + " }}"
    return value


def grafana_provisioning_value(value: str) -> str:
    """``value`` for a Grafana provisioning file, where ``$VAR`` and ``${VAR}`` expand environment variables."""
    return value.replace("$", "$$")


@dataclass
class Signals:
    """What the scraped ``/metrics`` lets the dashboard and the rules show, by our own constant names."""

    requests: str | None = None
    status_label: str | None = None
    errors: str | None = None
    latency: str | None = None
    latency_kind: str = ""
    health: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def panels(self) -> list[str]:
        shown = ["up"]
        if self.health:
            shown.append("health")
        if self.requests:
            shown.append("request rate")
        if self.errors or (self.requests and self.status_label):
            shown.append("error rate")
        if self.latency:
            shown.append("latency p95")
        return shown


def find_signals(text: str) -> Signals:
    """The known metric families in a Prometheus text exposition."""
    signals = Signals()
    families: dict[str, tuple[str, set[str]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            labels = {name for sample in family.samples for name in sample.labels}
            families[family.name] = (family.type, labels)
    except (ValueError, TypeError, IndexError) as err:
        signals.warnings.append(f"/metrics did not parse ({err}): the dashboard shows up only")
        return signals
    for name in REQUEST_COUNTERS:
        if families.get(name, ("", set()))[0] == "counter":
            signals.requests = name
            found = (label for label in STATUS_LABELS if label in families[name][1])
            signals.status_label = next(found, KNOWN_STATUS_LABELS.get(name))
            break
    signals.errors = next((n for n in ERROR_COUNTERS if families.get(n, ("", set()))[0] == "counter"), None)
    for name in LATENCY_FAMILIES:
        kind = families.get(name, ("", set()))[0]
        if kind in {"histogram", "summary"} and (kind == "histogram" or "quantile" in families[name][1]):
            signals.latency, signals.latency_kind = name, kind
            break
    signals.health = next((n for n in HEALTH_GAUGES if families.get(n, ("", set()))[0] == "gauge"), None)
    return signals


@dataclass(frozen=True)
class Queries:
    """The PromQL of one deployment, every run id in it a :func:`promql_string` literal."""

    selector: str
    signals: Signals

    @classmethod
    def of(cls, run_id: str, signals: Signals) -> Queries:
        return cls(f"run_id={promql_string(run_id)}", signals)

    def up(self) -> str:
        return f"up{{{self.selector}}}"

    def health(self) -> str | None:
        return f"{self.signals.health}{{{self.selector}}}" if self.signals.health else None

    def request_rate(self, window: str = RATE_WINDOW) -> str | None:
        if not self.signals.requests:
            return None
        return f"sum(rate({self.signals.requests}_total{{{self.selector}}}[{window}]))"

    def error_ratio(self, window: str = RATE_WINDOW) -> str | None:
        s = self.signals
        if s.errors:
            errors = f"sum(rate({s.errors}_total{{{self.selector}}}[{window}]))"
        elif s.requests and s.status_label:
            errors = f'sum(rate({s.requests}_total{{{self.selector},{s.status_label}=~"5.."}}[{window}]))'
        else:
            return None
        total = self.request_rate(window)
        return f"({errors} or vector(0)) / {total}" if total else None

    def latency_p95(self, window: str = RATE_WINDOW) -> str | None:
        s = self.signals
        if s.latency_kind == "histogram":
            return f"histogram_quantile(0.95, sum by (le) (rate({s.latency}_bucket{{{self.selector}}}[{window}])))"
        if s.latency_kind == "summary":
            return f'max({s.latency}{{{self.selector},quantile="0.95"}})'
        return None


def alert_rules(
    name: str, *, run_id: str, project: str, environment: str, target: str, signals: Signals | None = None
) -> str:
    """The Prometheus rule file of one release, as YAML written by a YAML library (every value quoted for it)."""
    queries = Queries.of(run_id, signals or Signals())
    labels = {
        "severity": "critical",
        "project": template_text(project),
        "environment": template_text(environment),
        "run_id": template_text(run_id),
    }
    where = f"{template_text(project)} ({template_text(environment)}) at {template_text(target)}"
    rules: list[dict[str, Any]] = [
        {
            "alert": "QuantumReleaseDown",
            "expr": f"{queries.up()} == 0",
            "for": "1m",
            "labels": labels,
            "annotations": {"summary": f"Release of {where} is down"},
        },
        {
            "alert": "QuantumReleaseTargetMissing",
            "expr": f"absent({queries.up()})",
            "for": "5m",
            "labels": {**labels, "severity": "warning"},
            "annotations": {"summary": f"Prometheus does not scrape the release of {where}"},
        },
    ]
    if errors := queries.error_ratio():
        rules.append(
            {
                "alert": "QuantumReleaseHighErrorRate",
                "expr": f"{errors} > {ERROR_RATIO_THRESHOLD}",
                "for": "5m",
                "labels": {**labels, "severity": "warning"},
                "annotations": {"summary": f"More than 5% of requests fail on the release of {where}"},
            }
        )
    if latency := queries.latency_p95():
        rules.append(
            {
                "alert": "QuantumReleaseHighLatency",
                "expr": f"{latency} > {LATENCY_P95_THRESHOLD_SECONDS}",
                "for": "10m",
                "labels": {**labels, "severity": "warning"},
                "annotations": {"summary": f"p95 latency above 1s on the release of {where}"},
            }
        )
    text: str = yaml.safe_dump(
        {"groups": [{"name": f"quantum-{name}", "rules": rules}]}, sort_keys=False, allow_unicode=True
    )
    return text


def dashboard_uid(run_id: str) -> str:
    """A Grafana dashboard uid (at most 40 of ``[A-Za-z0-9_-]``) that differs for different run ids."""
    return "quantum-" + hashlib.sha256(run_id.encode("utf-8", errors="surrogatepass")).hexdigest()[:24]


def dashboard_json(*, run_id: str, project: str, environment: str, target: str, signals: Signals) -> str:
    """The deployment's Grafana dashboard, built with grafana-foundation-sdk, as JSON.

    Panels and their titles are fixed text (Grafana expands variables in panel titles); the names from the request
    appear only in the dashboard's title, description and tags, and in queries as escaped string literals.
    """
    queries = Queries.of(run_id, signals)
    source = DataSourceRef(type_val="prometheus", uid="${datasource}")
    board = (
        Dashboard(f"{project} ({environment}) {dashboard_uid(run_id).removeprefix('quantum-')[:8]}")
        .uid(dashboard_uid(run_id))
        .description(f"Quantum Suite deployment of {project} ({environment}) at {target}, run {run_id}")
        .tags(["quantum", project, environment])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_panel(
            StatPanel()
            .title("Up")
            .datasource(source)
            .with_target(Dataquery().expr(queries.up()).legend_format("{{instance}}").ref_id("A"))
            .span(6)
            .height(5)
        )
    )
    if health := queries.health():
        board = board.with_panel(
            StatPanel()
            .title("Health")
            .datasource(source)
            .with_target(Dataquery().expr(health).ref_id("A"))
            .span(6)
            .height(5)
        )
    series = [
        ("Request rate", "reqps", queries.request_rate("$__rate_interval")),
        ("Error rate", "percentunit", queries.error_ratio("$__rate_interval")),
        ("Latency p95", "s", queries.latency_p95("$__rate_interval")),
    ]
    for title, unit, expr in series:
        if expr:
            board = board.with_panel(
                TimeseriesPanel()
                .title(title)
                .unit(unit)
                .datasource(source)
                .with_target(Dataquery().expr(expr).ref_id("A"))
                .span(12)
                .height(8)
            )
    text: str = JSONEncoder(sort_keys=True, indent=2).encode(board.build())
    return text + "\n"


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:  # noqa: S310 - our own loopback URL
        body: bytes = resp.read(MAX_SCRAPE_BYTES)
    if len(body) >= MAX_SCRAPE_BYTES:
        body = body[: body.rfind(b"\n") + 1]  # a line cut by the size bound is not the target's fault
    return body.decode(errors="replace")


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` whole under a hidden temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class RuleCheck:
    checked: bool
    message: str = ""


def check_rules(promtool: str, text: str) -> RuleCheck:
    """Run ``promtool check rules`` on ``text``; refused rules raise, a missing promtool says so."""
    with tempfile.TemporaryDirectory(prefix="quantum-rules-") as tmp:
        path = Path(tmp) / "rules.yml"
        path.write_text(text, encoding="utf-8")
        try:
            done = subprocess.run(  # noqa: S603 - a fixed argv, no shell
                [promtool, "check", "rules", str(path)],
                env=child_env(),  # never the worker's secrets
                capture_output=True,
                text=True,
                errors="replace",
                timeout=PROMTOOL_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise failure(TOOL_FAILURE, f"promtool check rules took longer than {PROMTOOL_TIMEOUT_SECONDS}s") from None
        except OSError as err:
            raise failure(TOOL_FAILURE, f"cannot run {promtool}: {err}") from None
    output = (done.stdout + done.stderr).replace(str(path), "rules.yml").strip()
    if done.returncode != 0:
        raise failure(
            UNSAFE_ARTIFACT, f"promtool check rules refused the rule file: {output[:MAX_PROMTOOL_MESSAGE_CHARS]}"
        )
    return RuleCheck(checked=True, message=output)


class SREAgent:
    """QSRE: writes and removes the monitoring files of a run under ``monitoring_dir``.

    ``promtool`` is the ``promtool`` command (``QUANTUM_PROMTOOL_BIN``): a name looked up on ``PATH`` or a path.
    """

    def __init__(self, monitoring_dir: Path, *, promtool: str | None = "promtool") -> None:
        self.monitoring_dir = monitoring_dir
        self.promtool = promtool

    @property
    def prometheus_dir(self) -> Path:
        return self.monitoring_dir / "prometheus"

    @property
    def grafana_dir(self) -> Path:
        return self.monitoring_dir / "grafana"

    def _paths(self, run_id: str) -> tuple[Path, Path, Path]:
        """The run's target, rules and dashboard files."""
        name = run_dir_name(run_id)
        return (
            self.prometheus_dir / "targets" / f"{name}.json",
            self.prometheus_dir / "rules" / f"{name}.yml",
            self.grafana_dir / "dashboards" / f"{name}.json",
        )

    def _legacy_paths(self, run_id: str) -> tuple[Path, Path]:
        """Where an earlier version wrote the run's target and rules (removed by teardown too, owned by the target)."""
        name = run_dir_name(run_id)
        return self.monitoring_dir / "targets" / f"{name}.json", self.monitoring_dir / "rules" / f"{name}.yml"

    def _owner(self, targets: Path) -> str | None:
        """The run id a target file was written for (its ``run_id`` label); None when unreadable."""
        try:
            entries = json.loads(targets.read_text())
            return str(entries[0]["labels"]["run_id"])
        except (OSError, ValueError, LookupError, TypeError):
            return None

    def _is_owned(self, path: Path, run_id: str) -> bool:
        """Whether an existing monitoring file was written for ``run_id`` (unreadable ones are not)."""
        try:
            if path.suffix == ".yml":
                groups = yaml.safe_load(path.read_text())["groups"]
                selector = f"{{run_id={promql_string(run_id)}}}"
                exprs = [str(rule["expr"]) for group in groups for rule in group["rules"]]
                return bool(exprs) and all(selector in expr for expr in exprs)
            if path.parent.name == "dashboards":
                return bool(json.loads(path.read_text())["uid"] == dashboard_uid(run_id))
        except (OSError, ValueError, LookupError, TypeError, yaml.YAMLError):
            return False
        return self._owner(path) == run_id

    def _promtool_path(self) -> str | None:
        return shutil.which(self.promtool) if self.promtool else None

    def _write_provisioning(self) -> list[str]:
        """The shared files that point Prometheus and Grafana at the per-deployment ones (same text every time)."""
        prom = self.prometheus_dir.resolve()
        config = {
            "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
            "rule_files": [str(prom / "rules" / "*.yml")],
            "scrape_configs": [
                {
                    "job_name": "quantum-deployments",
                    "file_sd_configs": [{"files": [str(prom / "targets" / "*.json")], "refresh_interval": "30s"}],
                }
            ],
        }
        dashboards = self.grafana_dir.resolve() / "dashboards"
        provider = {
            "apiVersion": 1,
            "providers": [
                {
                    "name": "quantum",
                    "orgId": 1,
                    "folder": DASHBOARD_FOLDER,
                    "type": "file",
                    "disableDeletion": False,
                    "allowUiUpdates": False,
                    "updateIntervalSeconds": 30,
                    "options": {
                        "path": grafana_provisioning_value(str(dashboards)),
                        "foldersFromFilesStructure": False,
                    },
                }
            ],
        }
        files = {
            self.prometheus_dir / "prometheus.yml": yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
            self.grafana_dir / "provisioning" / "dashboards" / PROVIDER_FILE: yaml.safe_dump(
                provider, sort_keys=False, allow_unicode=True
            ),
        }
        for path, text in files.items():
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                write_atomically(path, text)
        dashboards.mkdir(parents=True, exist_ok=True)
        return [str(path) for path in files]

    @activity.defn(name="sre.setup_monitoring")
    async def setup_monitoring(self, inp: MonitoringInput) -> MonitoringSetup:
        try:
            text = await asyncio.to_thread(scrape, inp.deployment_url)
        except OSError as err:
            raise failure(TOOL_FAILURE, f"cannot scrape {inp.deployment_url}/metrics: {err}") from None
        if "# TYPE" not in text:
            raise failure(TOOL_FAILURE, f"{inp.deployment_url}/metrics serves no Prometheus metrics")
        signals = find_signals(text)
        warnings = list(signals.warnings)
        target = urlparse(inp.deployment_url).netloc
        targets, rules, dashboard = self._paths(inp.run_id)
        for path in (targets, rules, dashboard):
            if path.exists() and not self._is_owned(path, inp.run_id):
                raise failure(UNSAFE_ARTIFACT, f"the monitoring file {path.name} is not this run's: nothing written")
        labels = {"project": inp.project, "environment": inp.environment, "run_id": inp.run_id}
        rule_text = alert_rules(
            targets.stem,
            run_id=inp.run_id,
            project=inp.project,
            environment=inp.environment,
            target=target,
            signals=signals,
        )
        promtool = self._promtool_path()
        checked = False
        if promtool is None:
            warnings.append(
                f"promtool not found ({self.promtool or 'not configured'}; set QUANTUM_PROMTOOL_BIN or install "
                "Debian's prometheus package): the alert rules were written unchecked"
            )
        else:
            checked = (await asyncio.to_thread(check_rules, promtool, rule_text)).checked
        board = dashboard_json(
            run_id=inp.run_id, project=inp.project, environment=inp.environment, target=target, signals=signals
        )
        provisioning = self._write_provisioning()
        # the target last: Prometheus scrapes a deployment only once its rules and dashboard are in place
        write_atomically(rules, rule_text)
        write_atomically(dashboard, board)
        write_atomically(targets, json.dumps([{"targets": [target], "labels": labels}], indent=2) + "\n")
        return MonitoringSetup(
            target=target,
            files=[str(targets), str(rules), str(dashboard)],
            scrape_ok=True,
            rules_checked=checked,
            dashboard_uid=dashboard_uid(inp.run_id),
            panels=signals.panels,
            provisioning=provisioning,
            warnings=warnings,
        )

    @activity.defn(name="sre.teardown_monitoring")
    async def teardown_monitoring(self, ref: RunRef) -> CleanupResult:
        """Remove the run's target, rules and dashboard (compensation): only files written for this very run.

        The shared provisioning files stay: other deployments' files are read through them.
        """
        paths = [*self._paths(ref.run_id), *self._legacy_paths(ref.run_id)]
        for path in self._paths(ref.run_id):
            if path.exists() and not self._is_owned(path, ref.run_id):
                raise failure(UNSAFE_ARTIFACT, f"the monitoring file {path.name} is not this run's: nothing removed")
        legacy_target = self._legacy_paths(ref.run_id)[0]
        if legacy_target.exists() and self._owner(legacy_target) != ref.run_id:
            raise failure(
                UNSAFE_ARTIFACT, f"the monitoring target {legacy_target.name} is not this run's: nothing removed"
            )
        removed = []
        for path in paths:
            if path.exists():
                path.unlink()
                removed.append(str(path))
        return CleanupResult(removed=removed)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.setup_monitoring, self.teardown_monitoring]
