"""The chart as Helm renders it: with its defaults, and with a production release's values."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
import yaml

from tests.helm.support import (
    CHART,
    COMPONENTS,
    NAMESPACE,
    ROOT,
    Manifest,
    chart_defaults,
    chart_metadata,
    component_name,
    container,
    deployment,
    env,
    file_source,
    lint,
    named,
    of_kind,
    pod_spec,
    production_values,
    render,
    settings,
)

RULES = CHART / "rules" / "quantum-alerts.yaml"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
GRACE = {"worker": 120, "bridge": 30}
WARNING = 2
"""Severity of a lint message from which `helm lint --strict` fails."""


@pytest.mark.parametrize("values", [None, production_values()], ids=["defaults", "production"])
def test_the_chart_lints_clean_in_strict_mode(values: dict[str, Any] | None) -> None:
    report = lint(values)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []


def test_the_chart_is_the_projects_version() -> None:
    metadata = chart_metadata()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (metadata["apiVersion"], metadata["name"], metadata["version"]) == ("v2", "quantum", "0.1.0")
    assert metadata["appVersion"] == project["version"]


def test_defaults_render_one_worker_one_bridge_and_nothing_optional(default_objects: list[Manifest]) -> None:
    kinds = sorted((obj["kind"], obj["metadata"]["name"]) for obj in default_objects)
    assert kinds == [
        ("ConfigMap", "prod-quantum"),
        ("Deployment", "prod-quantum-bridge"),
        ("Deployment", "prod-quantum-worker"),
        ("NetworkPolicy", "prod-quantum-bridge"),
        ("NetworkPolicy", "prod-quantum-worker"),
        ("Service", "prod-quantum-bridge"),
        ("Service", "prod-quantum-worker"),
        ("ServiceAccount", "prod-quantum"),
    ]
    assert {obj["metadata"]["namespace"] for obj in default_objects} == {NAMESPACE}
    for component in COMPONENTS:
        assert deployment(default_objects, component)["spec"]["replicas"] == 1
        assert container(default_objects, component)["image"] == "quantum-suite:0.1.0"


def test_defaults_reference_no_secret(default_objects: list[Manifest]) -> None:
    for component in COMPONENTS:
        assert set(env(default_objects, component)) == {"HOME"}
        assert [v["name"] for v in pod_spec(default_objects, component)["volumes"]] == ["data", "tmp"]
    assert settings(default_objects) == {
        "QUANTUM_TEMPORAL_ADDRESS": "temporal-frontend.temporal.svc.cluster.local:7233",
        "QUANTUM_TEMPORAL_NAMESPACE": "default",
        "QUANTUM_TEMPORAL_TLS": "false",
        "QUANTUM_TASK_QUEUE": "quantum-workflows",
        "QUANTUM_NATS_URL": "nats://nats.nats.svc.cluster.local:4222",
        "QUANTUM_STREAM_REPLICAS": "1",
        "QUANTUM_METRICS_PORT": "9464",
        "QUANTUM_METRICS_HOST": "0.0.0.0",
        "QUANTUM_DATA_DIR": "/data",
        "QUANTUM_WORKER_SHUTDOWN_SECONDS": "90",
        "QUANTUM_BRIDGE_BATCH": "64",
        "QUANTUM_BRIDGE_CONSUMER": "quantum-bridge",
    }


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_process_runs_its_command_with_the_settings(default_objects: list[Manifest], component: str) -> None:
    main = container(default_objects, component)
    assert main["args"] == [component]
    assert main["envFrom"] == [{"configMapRef": {"name": "prod-quantum"}}]
    assert main["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    spec = pod_spec(default_objects, component)
    assert spec["terminationGracePeriodSeconds"] == GRACE[component]
    assert "lifecycle" not in main  # SIGTERM alone drains: no preStop hook
    strategy = deployment(default_objects, component)["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


@pytest.mark.parametrize("component", COMPONENTS)
def test_probes_ask_the_metrics_port(default_objects: list[Manifest], component: str) -> None:
    main = container(default_objects, component)
    probes = chart_defaults()[component]["probes"]
    for kind in ("startup", "readiness", "liveness"):
        probe = main[f"{kind}Probe"]
        assert probe["httpGet"] == {"path": "/metrics", "port": "metrics"}
        assert {k: v for k, v in probe.items() if k != "httpGet"} == probes[kind]


@pytest.mark.parametrize("component", COMPONENTS)
def test_pods_are_locked_down(default_objects: list[Manifest], component: str) -> None:
    spec = pod_spec(default_objects, component)
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "prod-quantum"
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    main = container(default_objects, component)
    assert main["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert main["resources"] == chart_defaults()[component]["resources"]
    # the only writable places: /data and /tmp, both emptyDir by default
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert mounts == {"/data": "data", "/tmp": "tmp"}
    assert all("emptyDir" in v for v in spec["volumes"])


def test_production_scales_workers_with_an_autoscaler_and_bridges_by_count(production_objects: list[Manifest]) -> None:
    assert "replicas" not in deployment(production_objects, "worker")["spec"]
    assert deployment(production_objects, "bridge")["spec"]["replicas"] == 2
    [hpa] = of_kind(production_objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "prod-quantum-worker",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    for component in COMPONENTS:
        pdb = named(production_objects, "PodDisruptionBudget", component_name(component))
        assert pdb["spec"]["maxUnavailable"] == 1
        pod_labels = deployment(production_objects, component)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert (
            deployment(production_objects, component)["spec"]["selector"]["matchLabels"]
            == (pdb["spec"]["selector"]["matchLabels"])
        )


def test_production_settings_reach_the_configmap(production_objects: list[Manifest]) -> None:
    values = production_values()
    data = settings(production_objects)
    assert data["QUANTUM_TEMPORAL_ADDRESS"] == "quantum.a1b2c.tmprl.cloud:7233"
    assert data["QUANTUM_TEMPORAL_NAMESPACE"] == "quantum.a1b2c"
    assert data["QUANTUM_TEMPORAL_TLS"] == "true"  # implied by the client certificate
    assert data["QUANTUM_NATS_URL"] == values["nats"]["url"]
    assert data["QUANTUM_STREAM_REPLICAS"] == "3"
    assert data["QUANTUM_LLM_BASE_URL"] == "https://api.openai.com/v1"
    assert data["QUANTUM_LLM_MODEL"] == "gpt-4o-mini"
    assert data["QUANTUM_QDRANT_URL"] == "http://qdrant.qdrant.svc:6333"
    assert json.loads(data["QUANTUM_REVIEWER_GROUPS"]) == values["reviewers"]["groups"]
    assert json.loads(data["QUANTUM_REVIEW_DEFAULTS"]) == values["reviewers"]["reviewDefaults"]
    assert data["QUANTUM_WORKER_SHUTDOWN_SECONDS"] == "240"
    assert data["QUANTUM_BRIDGE_BATCH"] == "128"
    assert data["QUANTUM_BRIDGE_MAX_DELIVER"] == "20"
    secrets = re.compile(r"API_KEY|TOKEN|PASSWORD|SECRET")
    assert [name for name in data if secrets.search(name)] == []


def test_production_secrets_come_from_the_named_secrets(production_objects: list[Manifest]) -> None:
    worker, bridge = env(production_objects, "worker"), env(production_objects, "bridge")
    assert worker["QUANTUM_LLM_API_KEY"] == {"secretKeyRef": {"name": "quantum-llm", "key": "openai-api-key"}}
    assert worker["QUANTUM_QDRANT_API_KEY"] == {"secretKeyRef": {"name": "quantum-qdrant", "key": "api-key"}}
    assert "QUANTUM_TEMPORAL_API_KEY" not in worker  # mTLS, not an API key
    assert not {"QUANTUM_LLM_API_KEY", "QUANTUM_QDRANT_API_KEY", "QUANTUM_REVIEWER_KEYS"} & set(bridge)
    for component, variables in (("worker", worker), ("bridge", bridge)):
        sources = {
            "QUANTUM_TEMPORAL_TLS_CERT": ("secret", "quantum-temporal-mtls", "tls.crt"),
            "QUANTUM_TEMPORAL_TLS_KEY": ("secret", "quantum-temporal-mtls", "tls.key"),
            "QUANTUM_TEMPORAL_TLS_CA": ("secret", "quantum-temporal-mtls", "ca.crt"),
            "QUANTUM_NATS_CREDS": ("secret", "quantum-nats", "quantum.creds"),
        }
        for name, source in sources.items():
            assert file_source(production_objects, component, variables[name]) == source, name
    assert worker["QUANTUM_REVIEWER_KEYS"] == "/etc/quantum/reviewer-keys"
    assert file_source(production_objects, "worker", worker["QUANTUM_REVIEWER_KEYS"]) == (
        "secret",
        "quantum-reviewer-keys",
        None,
    )
    # every worker signs audit records with the one key of the Secret; the bridge writes none
    assert worker["QUANTUM_AUDIT_SIGNING_KEY"] == "/etc/quantum/audit/audit-signing.pem"
    assert file_source(production_objects, "worker", worker["QUANTUM_AUDIT_SIGNING_KEY"]) == (
        "secret",
        "quantum-audit-signing-key",
        "audit-signing.pem",
    )
    assert "QUANTUM_AUDIT_SIGNING_KEY" not in bridge


def test_production_pods_carry_what_the_values_ask(production_objects: list[Manifest]) -> None:
    values = production_values()
    for component in COMPONENTS:
        main = container(production_objects, component)
        assert main["image"] == f"{values['image']['repository']}:0.1.0@{values['image']['digest']}"
        assert pod_spec(production_objects, component)["imagePullSecrets"] == [{"name": "registry-credentials"}]
        assert deployment(production_objects, component)["metadata"]["labels"]["team"] == "platform"
    assert container(production_objects, "worker")["resources"] == values["worker"]["resources"]
    worker = pod_spec(production_objects, "worker")
    assert worker["terminationGracePeriodSeconds"] == 300
    assert worker["topologySpreadConstraints"] == values["worker"]["topologySpreadConstraints"]
    [data] = [v for v in worker["volumes"] if v["name"] == "data"]
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "quantum-data"}}


def test_network_policies_let_through_only_what_each_component_needs(production_objects: list[Manifest]) -> None:
    values = production_values()["networkPolicy"]

    def egress_ports(component: str) -> set[tuple[int, str]]:
        policy = named(production_objects, "NetworkPolicy", component_name(component))
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
        assert policy["spec"]["ingress"] == [
            {"from": values["metricsFrom"], "ports": [{"port": 9464, "protocol": "TCP"}]}
        ]
        return {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}

    common = {(53, "UDP"), (53, "TCP"), (7233, "TCP"), (4222, "TCP")}
    assert egress_ports("bridge") == common
    assert egress_ports("worker") == common | {(443, "TCP"), (6333, "TCP")}
    worker = named(production_objects, "NetworkPolicy", component_name("worker"))["spec"]["egress"]
    [nats] = [rule for rule in worker if rule["ports"] == [{"port": 4222, "protocol": "TCP"}]]
    assert nats["to"] == values["egress"]["nats"]["to"]


def test_prometheus_scrapes_each_component_as_the_job_the_alerts_and_dashboards_select(
    production_objects: list[Manifest],
) -> None:
    [monitor] = of_kind(production_objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    jobs = {}
    for service in of_kind(production_objects, "Service"):
        labels = service["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
        jobs[labels[monitor["spec"]["jobLabel"]]] = service["spec"]["selector"]["app.kubernetes.io/component"]
    assert jobs == {"quantum-worker": "worker", "quantum-bridge": "bridge"}
    selected = set(re.findall(r'job="([^"]+)"', RULES.read_text() + "".join(p.read_text() for p in DASHBOARDS)))
    assert selected and selected <= set(jobs)


def test_the_prometheus_rule_is_the_generated_alert_rules(production_objects: list[Manifest]) -> None:
    [rule] = of_kind(production_objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_one_dashboard_configmap_per_generated_dashboard(production_objects: list[Manifest]) -> None:
    maps = [cm for cm in of_kind(production_objects, "ConfigMap") if "grafana_dashboard" in cm["metadata"]["labels"]]
    assert len(maps) == len(DASHBOARDS) == 3
    by_file = {name: cm for cm in maps for name in cm["data"]}
    assert sorted(by_file) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        cm = by_file[path.name]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Quantum Suite"}
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())


def test_the_dashboard_label_is_configurable() -> None:
    objects = render({"dashboards": {"enabled": True, "label": "grafana.com/dashboard", "labelValue": "quantum"}})
    maps = [cm for cm in of_kind(objects, "ConfigMap") if "grafana.com/dashboard" in cm["metadata"]["labels"]]
    assert {cm["metadata"]["labels"]["grafana.com/dashboard"] for cm in maps} == {"quantum"}
    assert len(maps) == len(DASHBOARDS)


def test_a_settings_change_rolls_the_pods(default_objects: list[Manifest]) -> None:
    changed = render({"nats": {"url": "nats://nats-a:4222,nats://nats-b:4222"}})
    for component in COMPONENTS:
        before = deployment(default_objects, component)["spec"]["template"]["metadata"]["annotations"]
        after = deployment(changed, component)["spec"]["template"]["metadata"]["annotations"]
        assert before["checksum/config"] != after["checksum/config"]


def test_temporal_cloud_with_an_api_key() -> None:
    objects = render(
        {
            "temporal": {
                "address": "eu-west-1.aws.api.temporal.io:7233",
                "apiKey": {"secretName": "quantum-temporal", "key": "api-key"},
            }
        }
    )
    assert settings(objects)["QUANTUM_TEMPORAL_TLS"] == "true"
    for component in COMPONENTS:
        variables = env(objects, component)
        assert variables["QUANTUM_TEMPORAL_API_KEY"] == {"secretKeyRef": {"name": "quantum-temporal", "key": "api-key"}}
        assert "QUANTUM_TEMPORAL_TLS_CERT" not in variables
        assert "temporal-tls" not in {v["name"] for v in pod_spec(objects, component)["volumes"]}


def test_reviewer_keys_from_a_configmap_and_a_client_certificate_without_ca() -> None:
    objects = render(
        {
            "reviewers": {"keys": {"configMapName": "reviewer-keys", "mountPath": "/keys"}},
            "temporal": {"clientCertificate": {"secretName": "temporal-client"}},
        }
    )
    worker = env(objects, "worker")
    assert file_source(objects, "worker", worker["QUANTUM_REVIEWER_KEYS"]) == ("configMap", "reviewer-keys", None)
    assert file_source(objects, "worker", worker["QUANTUM_TEMPORAL_TLS_CERT"]) == (
        "secret",
        "temporal-client",
        "tls.crt",
    )
    assert "QUANTUM_TEMPORAL_TLS_CA" not in worker  # the system's CAs


def test_the_sandbox_profile_applies_to_the_worker_only() -> None:
    profile = {"type": "Localhost", "localhostProfile": "profiles/quantum-sandbox.json"}
    objects = render({"worker": {"sandbox": {"seccompProfile": profile, "procMount": "Unmasked", "hostUsers": False}}})
    worker, bridge = pod_spec(objects, "worker"), pod_spec(objects, "bridge")
    assert worker["securityContext"]["seccompProfile"] == profile
    assert worker["hostUsers"] is False
    assert container(objects, "worker")["securityContext"]["procMount"] == "Unmasked"
    assert bridge["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostUsers" not in bridge
    assert "procMount" not in container(objects, "bridge")["securityContext"]
