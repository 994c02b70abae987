"""``quantum bench`` suites run end to end on stacks of their own; timings are reported, never asserted.

What is asserted is what each suite must get right whatever the machine: every event became one run, the product
and its baseline ran the same agent activities, each figure was measured in every repetition, every process was
measured.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantum.bench.events import bench_events
from quantum.bench.footprint import bench_footprint
from quantum.bench.pipeline import bench_pipeline
from quantum.bench.report import Report
from quantum.bench.saga import bench_saga
from quantum.cli import app
from quantum.cli.bench import report_table


@pytest.mark.timeout(300)
async def test_bench_events_measures_both_paths_and_starts_every_event_once() -> None:
    report = await bench_events(events=30, rate=20, seconds=1.0, batch=8, duplicates=0.5, repetitions=2)
    assert all(len(series.values) == 2 for series in report.series.values())
    assert report.series["raw start_workflow"].low > 0 and report.series["through the bridge"].low > 0
    assert 0 < report.series["raw start call p50 at 20/s"].median <= report.series["raw start call p99 at 20/s"].median
    assert report.series["runs started twice"].values == [0, 0]
    copies = report.series["duplicates published"].values
    assert sum(copies) > 0  # half the events got a copy: the bridge saw duplicates
    assert report.series["duplicates recognised by the bridge"].values == copies
    assert {r.name: r.target for r in report.ratios.values()} == {
        "bridge / raw starts/s": 0.9,
        "publish-to-start p99 / raw call p99": 2.0,
        "publish-to-start p99, 50% duplicates / raw call p99": None,
    }


@pytest.mark.timeout(600)
async def test_bench_saga_runs_the_same_agent_activities_on_both_sides() -> None:
    ticks: list[tuple[str, int, int]] = []
    report = await bench_saga(runs=4, repetitions=2, progress=lambda *tick: ticks.append(tick))
    ratio = report.ratios["product / baseline runs/s"]
    assert len(ratio.values) == 2 and all(v > 0 for v in ratio.values) and ratio.target == 0.8
    assert report.series["product p50"].median <= report.series["product p99"].median
    recorded, shape = report.notes
    assert "scheduled 10 agent activities" in recorded
    # the product schedules the agents' activities and nothing else on the server: its events ride on them, and the
    # two announced as the run ends (its last stage's and its own) go out through one local activity
    assert "the baseline schedules 10 activities" in shape and "the product schedules 10 in" in shape
    assert "7 of its events ride on those activities, the rest go out through 1 local activity" in shape
    # both sides call the agents' activities with the inputs of the real run: the same data, a little apart in
    # encoding (pydantic's JSON and the SDK's)
    baseline_bytes, product_bytes = (
        int(size.replace(",", "")) for size in re.findall(r"([\d,]+) bytes of activity input", shape)
    )
    assert product_bytes > 1000 and 0.8 < baseline_bytes / product_bytes < 1.25, shape
    assert report.series["product worker peak resident"].median > report.series["baseline worker peak resident"].median
    assert ("2: product", 4, 4) in ticks and ("2: baseline", 4, 4) in ticks


@pytest.mark.timeout(600)
async def test_bench_footprint_measures_every_process_idle_and_loaded() -> None:
    ticks: list[tuple[str, int, int]] = []
    report = await bench_footprint(runs=4, repetitions=2, progress=lambda *tick: ticks.append(tick))
    processes = ("worker", "bridge", "temporal dev server", "nats-server", "baseline worker (SDK only)")
    for name in processes:
        idle, peak = report.series[f"{name}, idle"].values, report.series[f"{name}, peak under load"].values
        assert len(idle) == len(peak) == 2 and all(0 < i <= p for i, p in zip(idle, peak, strict=True)), name
    assert ("2: runs through the bridge", 4, 4) in ticks and ("2: baseline runs", 4, 4) in ticks
    assert report.ratios["worker peak"].target == 250.0


@pytest.mark.timeout(900)
async def test_bench_pipeline_times_real_runs_and_their_stages() -> None:
    report = await bench_pipeline(runs=1, concurrency=[1], repetitions=2)
    stages = {name.strip() for name in report.series if name.startswith("  ")}
    assert {"testgen.execute_tests", "security.scan", "infra.provision", "deploy.deploy"} <= stages
    assert report.series["run, one at a time"].median > report.series["  testgen.execute_tests"].median > 0
    assert report.series["concurrent runs before the time per run doubles"].values == [1]
    assert len(report.series["time per run, 1 concurrent"].values) == 2
    assert report.ratios["single run median"].target == 10.0


def test_the_table_shows_each_figure_its_range_and_whether_its_target_is_met() -> None:
    report = Report("demo", {"runs": 2})
    report.measure("[bold]raw[/bold] runs/s", "runs/s").values.extend([10.0, 12.0])
    report.ratio("product / raw", target=0.8).values.extend([0.5, 0.7])
    report.ratio("p99 / raw p99", target=2.0, direction="at most").values.append(1.5)
    table = report_table(report)
    cells = [[str(cell) for cell in column._cells] for column in table.columns]
    assert cells[0] == ["[bold]raw[/bold] runs/s", "product / raw", "p99 / raw p99"]  # names printed as text
    assert cells[1] == ["11.0", "0.60", "1.50"] and cells[2] == ["10.0 – 12.0", "0.50 – 0.70", ""]
    assert cells[4][1].endswith("missed") and cells[4][2].endswith("met")
    assert report.targets_met is False
    written = json.loads(json.dumps(report.to_json()))
    assert written["ratios"][0] == {**written["ratios"][0], "median": 0.6, "met": False}
    assert written["machine"]["cpus"] >= 1 and written["targets_met"] is False


@pytest.mark.timeout(300)
def test_the_command_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "events.json"
    args = ["bench", "events", "--events", "10", "--rate", "10", "--seconds", "0.5", "--repetitions", "1"]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "quantum bench events" in result.output and "bridge / raw starts/s" in result.output
    assert json.loads(out.read_text())["suite"] == "events"


@pytest.mark.timeout(600)
async def test_bench_saga_runs_on_a_cluster_of_ones_own_with_its_payload_keys(
    temporal_address: str, nats_url: str, tmp_path: Path
) -> None:
    """``--cluster``: the stack the settings name, not one of the bench's own. Its payload keys reach the bench's
    worker processes on their standard input: the product's runs are encrypted on the server, and its worker could
    not have run them without the keys."""
    from temporalio.client import Client

    from tests.codec.support import keys_json, settings

    cluster = settings(temporal_address=temporal_address, nats_url=nats_url, codec_keys=keys_json("k1")[0])
    report = await bench_saga(runs=2, repetitions=1, cluster=cluster)
    assert report.parameters["on"] == f"{temporal_address} (default)"
    assert report.ratios["product / baseline runs/s"].values[0] > 0
    assert "product: worker CPU per run" in report.series
    assert not [name for name in report.series if "Temporal server" in name]  # not this machine's to measure
    keyless = await Client.connect(temporal_address)
    encodings = set()
    async for run in keyless.list_workflows(
        'WorkflowType="DevSecOpsPipelineWorkflow" AND TaskQueue STARTS_WITH "bench-saga-"'
    ):
        history = await keyless.get_workflow_handle(run.id).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        encodings |= {p.metadata["encoding"] for p in started.input.payloads}
    assert encodings == {b"binary/encrypted"}


@pytest.mark.timeout(300)
async def test_bench_events_on_a_cluster_leaves_its_stream_alone_and_no_run_of_its_own_running(
    temporal_address: str, nats_url: str
) -> None:
    """On a cluster of one's own, a deployment's bridge consumes ``QUANTUM_EVENTS``: the bench's events travel on a
    stream of the bench's own, deleted after, and the runs it started (which no worker polls) are terminated."""
    import asyncio

    import nats
    from temporalio.client import Client

    from events.streams import EVENTS_STREAM
    from tests.codec.support import keys_json, settings

    cluster = settings(temporal_address=temporal_address, nats_url=nats_url, codec_keys=keys_json("k1")[0])
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await js.stream_info(EVENTS_STREAM)  # the streams exist before, as on a deployment's bus
    except nats.js.errors.NotFoundError:
        from events.streams import ensure_streams

        await ensure_streams(js, cluster.stream_limits())
    before = (await js.stream_info(EVENTS_STREAM)).state.last_seq
    try:
        report = await bench_events(
            events=10, rate=10, seconds=0.5, batch=4, duplicates=0.5, repetitions=1, cluster=cluster
        )
        assert (await js.stream_info(EVENTS_STREAM)).state.last_seq == before
        names = [info.config.name for info in await js.streams_info()]
        assert EVENTS_STREAM in names and not [name for name in names if name.startswith("QUANTUM_BENCH")]
    finally:
        await nc.close()
    assert report.parameters["on"] == f"{temporal_address} (default)"
    assert report.series["runs started twice"].values == [0]
    # 10 to warm up, 10 raw and 10 through the bridge, then 5 raw calls and 5 + 5 events at the steady rate
    assert "the 45 runs the bench started were terminated at the end" in report.notes
    client = await Client.connect(temporal_address)
    query = 'WorkflowType="CodeGenerationWorkflow" AND TaskQueue STARTS_WITH "bench-" AND ExecutionStatus="Running"'
    for _ in range(50):  # visibility follows the terminations within moments
        if (running := (await client.count_workflows(query)).count) == 0:
            break
        await asyncio.sleep(0.2)
    assert running == 0


@pytest.mark.timeout(600)
async def test_bench_footprint_on_a_cluster_measures_this_machines_workers_only(
    temporal_address: str, nats_url: str
) -> None:
    from tests.codec.support import settings

    cluster = settings(temporal_address=temporal_address, nats_url=nats_url)
    report = await bench_footprint(runs=2, repetitions=1, cluster=cluster)
    measured = {name.removesuffix(", idle") for name in report.series if name.endswith(", idle")}
    assert measured == {"worker", "baseline worker (SDK only)"}
    for name in measured:
        idle, peak = report.series[f"{name}, idle"].median, report.series[f"{name}, peak under load"].median
        assert 0 < idle <= peak, name
    assert "started by the client" in report.notes[0]
    assert "the bridge and the servers are not measured" in report.notes[1]


async def test_a_bench_worker_gets_its_secrets_on_stdin_not_in_its_environment(tmp_path: Path) -> None:
    import sys

    from quantum.stack.process import ServerProcess

    secret = b'{"temporal_api_key": "canary-7f3e"}'
    probe = (
        "import os, sys; data = sys.stdin.read(); print('re' + 'ad:', data, flush=True); "
        "print('in its ' + 'environment:', 'can' + 'ary' in repr(os.environ), flush=True); import time; time.sleep(60)"
    )
    child = ServerProcess("probe", [sys.executable, "-c", probe], tmp_path / "probe.log", stdin=secret)

    async def printed() -> bool:
        return "in its environment:" in (tmp_path / "probe.log").read_text()

    await child.start(printed, timeout=30)
    await child.stop()
    log = (tmp_path / "probe.log").read_text()
    assert 'read: {"temporal_api_key": "canary-7f3e"}' in log and "in its environment: False" in log
    assert "canary" not in log.splitlines()[0]  # the command line, as logged
