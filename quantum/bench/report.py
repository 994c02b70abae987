"""What a benchmark reports: series measured once per repetition, ratios to a baseline of the same repetition, and
the targets they are held to. Printed as a table and written as JSON."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Progress = Callable[[str, int, int], None]
"""Told ``(what, done, total)`` as a suite advances."""


def quiet(_what: str, _done: int, _total: int) -> None:
    """A progress callback that shows nothing."""


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (inclusive method); the value itself for one sample, 0 for none."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@dataclass
class Series:
    """One figure, measured once in each repetition."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else 0.0

    @property
    def low(self) -> float:
        return min(self.values, default=0.0)

    @property
    def high(self) -> float:
        return max(self.values, default=0.0)


@dataclass
class Ratio(Series):
    """The product's figure over its baseline's, repetition by repetition, and the target it is held to."""

    unit: str = "x"
    target: float | None = None
    direction: Literal["at least", "at most"] = "at least"

    @property
    def met(self) -> bool | None:
        if self.target is None or not self.values:
            return None
        return self.median >= self.target if self.direction == "at least" else self.median <= self.target


@dataclass
class Report:
    """A suite's figures. ``series`` and ``ratios`` keep their order of declaration (the table's rows)."""

    suite: str
    parameters: dict[str, Any]
    series: dict[str, Series] = field(default_factory=dict)
    ratios: dict[str, Ratio] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def measure(self, name: str, unit: str) -> Series:
        return self.series.setdefault(name, Series(name, unit))

    def ratio(
        self,
        name: str,
        *,
        target: float | None = None,
        direction: Literal["at least", "at most"] = "at least",
        unit: str = "x",
    ) -> Ratio:
        """A figure held to a target: a ratio to a baseline (``x``), or an absolute bound in ``unit``."""
        return self.ratios.setdefault(name, Ratio(name, unit, target=target, direction=direction))

    @property
    def targets_met(self) -> bool:
        """Whether no ratio misses its target."""
        return all(r.met is not False for r in self.ratios.values())

    def to_json(self) -> dict[str, Any]:
        def row(s: Series) -> dict[str, Any]:
            return {**asdict(s), "median": s.median, "low": s.low, "high": s.high}

        return {
            "suite": self.suite,
            "parameters": self.parameters,
            "machine": machine(),
            "series": [row(s) for s in self.series.values()],
            "ratios": [{**row(r), "met": r.met} for r in self.ratios.values()],
            "targets_met": self.targets_met,
            "notes": self.notes,
        }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_mb": memory,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
