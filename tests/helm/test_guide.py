"""docs/deploy-kubernetes.md documents every value of the chart, and only those."""

from __future__ import annotations

import re
from typing import Any

from tests.helm.support import ROOT, chart_defaults

GUIDE = ROOT / "docs" / "deploy-kubernetes.md"
WHOLE = {"resources", "probes", "seccompProfile"}
"""Values documented as one row, not field by field."""


def leaves(values: dict[str, Any], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in WHOLE and prefix != "networkPolicy.egress.":
            found |= leaves(value, f"{path}.")
        else:
            found.add(path)
    return found


def documented() -> set[str]:
    """The values named in the first column of the guide's table (`a.b.c`, `.d` meaning `a.b.d`)."""
    table = GUIDE.read_text().split("## Every value", 1)[1]
    names: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+) \|", table, flags=re.MULTILINE):
        first = ""
        for name in re.findall(r"`([^`]+)`", row):
            if name.startswith("."):
                name = first.rsplit(".", 1)[0] + name
            else:
                first = name
            names.add(name)
    return names


def test_the_guide_documents_every_value() -> None:
    values = leaves(chart_defaults())
    assert len(values) > 80
    assert values - documented() == set(), "values missing from the guide's table"
    assert documented() - values == set(), "the guide's table names values the chart does not have"
