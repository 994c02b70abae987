"""The figures of ``quantum bench chaos`` count what they say: a duplicated event, a second release host, a lost
announcement, a file a compensation left, a process left in the data directory (no stack needed)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from agents.processes import ProcessIdentity, die_with_parent
from agents.workspace import run_dir_name
from quantum.chaos import (
    ChaosConfig,
    ChaosReport,
    Failover,
    RunOutcome,
    SideEffects,
    count_events,
    count_kept,
    release_hosts,
)
from quantum.stack.proctable import ProcessEntry, processes
from workflows.models import RunStatusView

RUN = "pipeline-chaos-0"


def view(**stages: str) -> RunStatusView:
    return RunStatusView(pipeline_id=RUN, workflow="DevSecOpsPipelineWorkflow", stages=dict(stages))


def event(event_id: str, kind: str, stage: str | None = None) -> dict[str, object]:
    data: dict[str, object] = {"pipeline_id": RUN} | ({"stage": stage} if stage else {})
    return {"id": event_id, "type": kind, "data": data}


def test_events_are_counted_by_id_and_each_announcement_is_looked_for() -> None:
    outcome = RunOutcome(RUN, "chaos0", "succeeded", "completed")
    events = [
        event(f"{RUN}.started", "quantum.pipeline.started"),
        event(f"{RUN}.stage.generate_code.completed", "quantum.stage.completed", "generate_code"),
        event(f"{RUN}.stage.generate_code.completed", "quantum.stage.completed", "generate_code"),  # twice on the bus
        event(f"{RUN}.completed", "quantum.pipeline.completed"),
    ]
    effects = SideEffects()
    count_events(effects, events, [outcome], {RUN: view(generate_code="succeeded", security_scan="succeeded")})
    assert effects.events == 3
    assert effects.duplicates == Counter(events=1)
    assert effects.losses == Counter(events=1)  # security_scan succeeded but was never announced
    assert any("security_scan" in d for d in effects.details)


def host(deployments: Path, run_id: str, pid: int) -> ProcessEntry:
    root = str(deployments / run_dir_name(run_id) / "release")
    argv = [sys.executable, "-m", "agents.release_server", "--kind", "service", "--root", root, "--port", "0"]
    return ProcessEntry(ProcessIdentity(pid=pid, start=1), argv, None)


def test_release_hosts_are_counted_by_run(tmp_path: Path) -> None:
    deployments = tmp_path / "deployments"
    other = "pipeline-chaos-1"
    table = [host(deployments, RUN, 10), host(deployments, RUN, 11), host(deployments, "pipeline-elsewhere", 12)]
    assert release_hosts(deployments, [RUN, other], table) == {RUN: 2, other: 0}


def test_what_a_run_keeps_is_a_loss_when_missing_and_a_leftover_after_compensation(tmp_path: Path) -> None:
    succeeded = RunOutcome(RUN, "chaos0", "succeeded", "completed")
    compensated = RunOutcome("pipeline-chaos-1", "chaos1", "compensated", "failed")
    kept = tmp_path / "monitoring" / "prometheus" / "targets" / f"{run_dir_name(compensated.run_id)}.json"
    kept.parent.mkdir(parents=True)
    kept.write_text("[]")  # a target the compensation should have removed
    views = {RUN: view(), compensated.run_id: view()}
    effects = SideEffects()
    count_kept(effects, tmp_path, [succeeded, compensated], views, streams=set(), hosts={RUN: 2})
    assert effects.duplicates == Counter({"release hosts": 1})
    assert effects.losses == Counter({"streams": 1, "directories": 1, "release records": 1, "monitoring files": 1})
    assert effects.leftovers == Counter({"monitoring files": 1})


def report(effects: SideEffects, orphans: list[str], *endings: str) -> ChaosReport:
    outcomes = [RunOutcome(f"pipeline-chaos-{n}", f"chaos{n}", e, "completed") for n, e in enumerate(endings)]
    failovers = [Failover(RUN, "testgen.execute_tests", 1, 29.5, "another worker", "describe")]
    return ChaosReport(ChaosConfig(runs=len(endings)), outcomes, [], failovers, effects, orphans, 60.0)


def test_the_verdict_fails_on_any_duplicate_loss_leftover_orphan_or_other_ending() -> None:
    assert report(SideEffects(), [], "succeeded", "compensated").ok
    assert not report(SideEffects(), [], "succeeded", "other").ok
    assert not report(SideEffects(), ["pid 1: x"], "succeeded").ok
    for figure in ("duplicates", "losses", "leftovers"):
        effects = SideEffects()
        getattr(effects, figure)["events"] += 1
        assert not report(effects, [], "succeeded").ok
    figures = report(SideEffects(), [], "succeeded").as_json()
    assert figures["endings"] == {"succeeded": 1, "compensated": 0, "other": 0}
    assert figures["failover"]["measured"] == 1 and figures["failover"]["median_seconds"] == 29.5


def test_a_process_working_or_named_in_a_directory_is_found(tmp_path: Path) -> None:
    dies = die_with_parent()
    inside = subprocess.Popen(["sleep", "30"], cwd=tmp_path, preexec_fn=dies)
    named = subprocess.Popen(["sh", "-c", "sleep 30; true", str(tmp_path / "x")], cwd="/", preexec_fn=dies)
    elsewhere = subprocess.Popen(["sleep", "30"], cwd="/", preexec_fn=dies)
    children = (inside, named, elsewhere)
    try:
        deadline = time.monotonic() + 10
        while True:
            found = {p.identity.pid for p in processes() if p.within(tmp_path)}
            if {inside.pid, named.pid} <= found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert {inside.pid, named.pid} <= found and elsewhere.pid not in found
        entry = ProcessEntry(ProcessIdentity(pid=1, start=1), ["x", "--root", str(tmp_path / "release")], None)
        assert entry.within(tmp_path) and entry.option("--root") == str(tmp_path / "release")
        assert not ProcessEntry(ProcessIdentity(pid=1, start=1), ["x", f"{tmp_path}-other"], None).within(tmp_path)
    finally:
        for proc in children:
            proc.kill()
            proc.wait()
