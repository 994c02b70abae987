"""The dashboards: each picks its Prometheus, every query runs on a real one and keeps the labels its legend names."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest

from quantum.observability.dashboards import dashboards, panel_queries
from tests.observability.conftest import Prometheus

BOARDS = dashboards()
FOUND = {name: panel_queries(board) for name, board in BOARDS.items()}
QUERIES = [
    pytest.param(title, expr, labels, id=f"{name.removesuffix('.json')}: {title}")
    for name, queries in FOUND.items()
    for title, expr, labels in queries
]
_BY = re.compile(r"\bby\s*\(([^)]*)\)")


def kept_labels(expr: str) -> set[str]:
    """The labels a query's result keeps, read from its ``by (...)`` clauses: enough PromQL for these dashboards.

    Every query aggregates, and combines only aggregations (by ``-``, ``/``, ``or``, ``histogram_quantile``), so a
    label survives when every ``by`` keeps it; ``le`` is consumed by ``histogram_quantile``.
    """
    groups = [{label.strip() for label in group.split(",") if label.strip()} for group in _BY.findall(expr)]
    return set.intersection(*groups) - {"le"} if groups else set()


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def test_three_dashboards_by_uid() -> None:
    assert {name: board["title"] for name, board in BOARDS.items()} == {
        "quantum-pipelines.json": "Quantum Suite / Pipelines",
        "quantum-bus.json": "Quantum Suite / Bus",
        "quantum-workers.json": "Quantum Suite / Workers",
    }
    assert all(board["uid"] == name.removesuffix(".json") for name, board in BOARDS.items())


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_panel_reads_the_chosen_prometheus(name: str) -> None:
    board = BOARDS[name]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    assert all(panel["datasource"] == chosen for panel in panels(board))
    assert all(v["datasource"] == chosen for v in variables.values() if v["type"] == "query")
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


def test_the_pipelines_and_workers_filter_by_their_variables() -> None:
    for name, variable, matcher in [
        ("quantum-pipelines.json", "workflow_type", 'workflow_type=~"$workflow_type"'),
        ("quantum-workers.json", "instance", 'job="quantum-worker", instance=~"$instance"'),
    ]:
        names = [v["name"] for v in BOARDS[name]["templating"]["list"]]
        assert names == ["datasource", variable]
        exprs = [target["expr"] for panel in panels(BOARDS[name]) for target in panel["targets"]]
        assert any(matcher in expr for expr in exprs)


def test_panel_queries_substitute_every_variable() -> None:
    exprs = {expr for queries in FOUND.values() for _, expr, _ in queries}
    assert not any("$" in expr or "[[" in expr for expr in exprs)
    assert any('workflow_type=~".*"' in expr for expr in exprs)
    assert any("[6h]" in expr and "offset 6h" in expr for expr in exprs)  # $__range: the dashboards' 6 hours
    assert any("[1m]" in expr for expr in exprs)  # $__rate_interval


def test_panel_queries_refuse_a_variable_grafana_would_not_know() -> None:
    board = copy.deepcopy(BOARDS["quantum-bus.json"])
    panels(board)[0]["targets"][0]["expr"] = "sum(rate(quantum_bridge_events_total[$window]))"
    with pytest.raises(
        ValueError, match="panel 'Inbound events by type and outcome' uses an unknown variable 'window'"
    ):
        panel_queries(board)


def test_kept_labels_reads_grouping() -> None:
    assert kept_labels("histogram_quantile(0.95, sum by (gate, outcome, le) (rate(x_bucket[1m])))") == {
        "gate",
        "outcome",
    }
    assert kept_labels("sum by (gate) (a) - (sum by (gate) (b) or sum by (gate) (a) * 0)") == {"gate"}
    assert kept_labels("sum by (a, b) (sum by (a) (x))") == {"a"}
    assert kept_labels("sum(rate(x[1m]))") == set()


@pytest.mark.parametrize(("title", "expr", "labels"), QUERIES)
def test_every_legend_label_is_kept_by_its_query(title: str, expr: str, labels: list[str]) -> None:
    assert set(labels) <= kept_labels(expr), f"{title}: the legend names {labels}, the query keeps {kept_labels(expr)}"


@pytest.mark.parametrize(("title", "expr", "labels"), QUERIES)
def test_every_query_shows_series_with_its_legend_labels(
    prometheus: Prometheus, title: str, expr: str, labels: list[str]
) -> None:
    """Run on a real Prometheus scraping the product's metrics, every query shows numbers, labelled as its legend."""
    result = prometheus.query(expr)
    assert result, f"{title}: no series"
    for series in result:
        assert all(series["metric"].get(label) for label in labels), f"{title}: {series['metric']} lacks {labels}"
        assert math.isfinite(float(series["value"][1])), f"{title}: {series}"


@pytest.mark.parametrize("name", ["quantum-pipelines.json", "quantum-workers.json"])
def test_every_label_variable_finds_values(prometheus: Prometheus, name: str) -> None:
    for variable in BOARDS[name]["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
            assert found, variable["query"]
            selector, label = found.groups()
            assert prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": selector}), variable["name"]
