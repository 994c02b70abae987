"""``quantum bench events`` runs end to end on a stack of its own; timings are reported, never asserted."""

from __future__ import annotations

import pytest

from quantum.bench import bench_events


@pytest.mark.timeout(240)
async def test_bench_events_measures_both_paths_and_starts_every_event() -> None:
    report = await bench_events(events=40, rate=20, seconds=1.0, batch=16)
    assert report.started == 40 + 20  # the backlog, then the steady stream: every event became a run
    assert report.latency_samples == 20
    assert report.raw_starts_per_second > 0 and report.bridge_starts_per_second > 0
    assert 0 < report.latency_p50_ms <= report.latency_p99_ms
    assert [row[0] for row in report.rows()][:2] == ["raw start_workflow (baseline)", "through the bridge"]
