"""The Temporal SDK's metrics, and the workflows' own, on the process's one ``/metrics`` endpoint.

The SDK can serve Prometheus itself, but on a port of its own; a process here serves one endpoint. So the worker's
Temporal runtime records into a :class:`~temporalio.runtime.MetricBuffer`, and :class:`TemporalCollector`, a
prometheus-client collector, drains the buffer (on every scrape, and every second so it never overflows) into
counters, gauges and histograms it exposes with the rest. The workflows' metrics (``workflow.metric_meter()``)
take the same path, so they are exposed here too, and the SDK skips them while a workflow replays: a run is
counted once however often a worker replays it.

Names as exposed: counters get ``_total``, histograms of durations ``_seconds`` (the buffer records seconds); every
series keeps the attributes the SDK gives it (``namespace``, ``task_queue``, ``workflow_type``...) as labels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import REGISTRY, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_GAUGE,
    BufferedMetricUpdate,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
)

log = logging.getLogger(__name__)

BUFFER_SIZE = 100_000
DRAIN_INTERVAL_SECONDS = 1.0
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600,
)  # fmt: skip
"""Bucket bounds of every histogram the buffer feeds: milliseconds (task latencies) to a day (a gate's wait)."""

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.buckets[i] += 1
        self.total += value
        self.count += 1


@dataclass
class _Family:
    name: str
    description: str
    kind: str
    values: dict[Labels, float] = field(default_factory=dict)
    histograms: dict[Labels, _Histogram] = field(default_factory=dict)


def exposed_name(name: str, kind: int, unit: str | None) -> tuple[str, str]:
    """The name a buffered metric is exposed under and its Prometheus type."""
    if kind == BUFFERED_METRIC_KIND_COUNTER:
        return name.removesuffix("_total"), "counter"
    if kind == BUFFERED_METRIC_KIND_GAUGE:
        return name, "gauge"
    if unit in ("s", "seconds", "duration") and not name.endswith("_seconds"):
        name += "_seconds"
    return name, "histogram"


def _labels(attributes: Mapping[str, str | int | float | bool]) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in attributes.items()))


class TemporalCollector(Collector):
    """Exposes what a :class:`MetricBuffer` holds: counters summed, gauges at their last value, histograms
    bucketed (see :data:`BUCKETS`)."""

    def __init__(self, buffer: MetricBuffer) -> None:
        self._buffer = buffer
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}

    def drain(self) -> None:
        """Take every update the buffer holds now."""
        with self._lock:
            for update in self._buffer.retrieve_updates():
                self._apply(update)

    def _apply(self, update: BufferedMetricUpdate) -> None:
        metric = update.metric
        name, kind = exposed_name(metric.name, metric.kind, metric.unit)
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _Family(name, metric.description or metric.name, kind)
        labels = _labels(update.attributes)
        if kind == "counter":
            family.values[labels] = family.values.get(labels, 0.0) + float(update.value)
        elif kind == "gauge":
            family.values[labels] = float(update.value)
        else:
            family.histograms.setdefault(labels, _Histogram()).observe(float(update.value))

    def collect(self) -> Iterator[Metric]:
        self.drain()
        with self._lock:
            families = list(self._families.values())
            for family in families:
                yield self._metric(family)

    @staticmethod
    def _metric(family: _Family) -> Metric:
        metric = Metric(family.name, family.description, family.kind)
        if family.kind == "histogram":
            for labels, histogram in family.histograms.items():
                named = dict(labels)
                for bound, count in zip(BUCKETS, histogram.buckets, strict=True):
                    metric.add_sample(f"{family.name}_bucket", {**named, "le": _bound(bound)}, count)
                metric.add_sample(f"{family.name}_bucket", {**named, "le": "+Inf"}, histogram.count)
                metric.add_sample(f"{family.name}_count", named, histogram.count)
                metric.add_sample(f"{family.name}_sum", named, histogram.total)
            return metric
        suffix = "_total" if family.kind == "counter" else ""
        for labels, value in family.values.items():
            metric.add_sample(f"{family.name}{suffix}", dict(labels), value)
        return metric


def _bound(value: float) -> str:
    return repr(float(value))


class TemporalTelemetry:
    """The process's Temporal runtime, recording into a buffer that :class:`TemporalCollector` exposes."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.buffer = MetricBuffer(BUFFER_SIZE, MetricBufferDurationFormat.SECONDS)
        self.runtime = Runtime(telemetry=TelemetryConfig(metrics=self.buffer))
        self.collector = TemporalCollector(self.buffer)
        registry.register(self.collector)
        self._stop = threading.Event()
        self._drainer = threading.Thread(target=self._drain_often, name="temporal-metrics", daemon=True)
        self._drainer.start()

    def _drain_often(self) -> None:
        while not self._stop.wait(DRAIN_INTERVAL_SECONDS):
            try:
                self.collector.drain()
            except Exception:  # never let the metrics stop the worker
                log.exception("cannot drain the Temporal metrics buffer")


_telemetry: TemporalTelemetry | None = None
_telemetry_lock = threading.Lock()


def telemetry() -> TemporalTelemetry:
    """The process's one :class:`TemporalTelemetry` (a Temporal runtime is made once per process)."""
    global _telemetry
    with _telemetry_lock:
        if _telemetry is None:
            _telemetry = TemporalTelemetry()
        return _telemetry
