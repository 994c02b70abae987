"""The chart rendered by real Helm (helm-python-sdk: Helm v4's library, no helm binary), and ways to read it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("helm_python")

import helm_python as helm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "quantum"
PRODUCTION = Path(__file__).with_name("values-production.yaml")
RELEASE = "prod"
NAMESPACE = "quantum-suite"
COMPONENTS = ("worker", "bridge")

Manifest = dict[str, Any]
Values = dict[str, Any]


def production_values() -> Values:
    values: Values = yaml.safe_load(PRODUCTION.read_text())
    return values


def render(values: Values | None = None) -> list[Manifest]:
    """Every object the chart renders with ``values`` over its defaults, as parsed YAML."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def refusal(values: Values) -> str:
    """Helm's message when it refuses to render ``values``."""
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    return str(caught.value)


def chart_defaults() -> Values:
    with helm.Chart.load(CHART) as chart:
        return chart.values


def chart_metadata() -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.metadata


def lint(values: Values | None = None) -> dict[str, Any]:
    """``helm lint --strict`` of the chart with ``values``."""
    return helm.lint(CHART, values, strict=True, namespace=NAMESPACE)


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def component_name(component: str) -> str:
    return f"{RELEASE}-quantum-{component}"


def deployment(objects: list[Manifest], component: str) -> Manifest:
    return named(objects, "Deployment", component_name(component))


def pod_spec(objects: list[Manifest], component: str) -> Manifest:
    spec: Manifest = deployment(objects, component)["spec"]["template"]["spec"]
    return spec


def container(objects: list[Manifest], component: str) -> Manifest:
    containers = pod_spec(objects, component)["containers"]
    assert len(containers) == 1
    only: Manifest = containers[0]
    return only


def env(objects: list[Manifest], component: str) -> dict[str, Any]:
    """The container's own variables: name to value, or to its ``valueFrom``."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objects, component).get("env", [])}


def settings(objects: list[Manifest]) -> dict[str, str]:
    """The ConfigMap every container takes its settings from (``envFrom``)."""
    data: dict[str, str] = named(objects, "ConfigMap", f"{RELEASE}-quantum")["data"]
    return data


def file_source(objects: list[Manifest], component: str, path: str) -> tuple[str, str, str | None]:
    """Where the file or directory at ``path`` in the container comes from: (volume kind, object name, key); the
    key is None for a whole directory."""
    mounts = container(objects, component)["volumeMounts"]
    [mount] = [m for m in mounts if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")]
    assert mount.get("readOnly") is True, f"{mount['mountPath']} is writable"
    [volume] = [v for v in pod_spec(objects, component)["volumes"] if v["name"] == mount["name"]]
    relative = path[len(mount["mountPath"]) + 1 :]
    for kind, name_field in (("secret", "secretName"), ("configMap", "name")):
        if kind in volume:
            source = volume[kind]
            if not relative:
                return kind, source[name_field], None
            [key] = [item["key"] for item in source["items"] if item["path"] == relative]
            return kind, source[name_field], key
    raise AssertionError(f"{path} is on volume {volume['name']}, which is neither a Secret nor a ConfigMap")
