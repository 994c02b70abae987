"""What operators watch Quantum Suite with: Grafana dashboards and Prometheus alert rules, as code.

The generated files are committed under ``helm/quantum/`` (``dashboards/<uid>.json``, ``rules/quantum-alerts.yaml``)
so that a deployment needs no Python to use them; ``python -m quantum.observability`` regenerates them, and a test
fails while a committed file differs from what the code generates.
"""

from __future__ import annotations

import json
from pathlib import Path

from quantum.observability.alerts import rule_file_yaml
from quantum.observability.dashboards import dashboards

DASHBOARDS_DIR = Path("helm/quantum/dashboards")
RULES_FILE = Path("helm/quantum/rules/quantum-alerts.yaml")


def artifacts() -> dict[Path, str]:
    """Every generated file's text, by its path relative to the repository root."""
    files = {
        DASHBOARDS_DIR / name: json.dumps(model, indent=2, sort_keys=True) + "\n"
        for name, model in dashboards().items()
    }
    files[RULES_FILE] = rule_file_yaml()
    return files


def write_artifacts(root: Path) -> list[Path]:
    """Write every generated file under ``root``; returns the paths written."""
    written = []
    for relative, text in artifacts().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
