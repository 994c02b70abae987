"""A run's outbound events ride on the activities it schedules (``workflows.outbox``, ``quantum.outbox``): once each
on the bus, in order, with one local activity for what no activity takes."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client as NATS
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from events.catalog import StageCompleted
from events.models import ApprovalPolicy
from events.publisher import PublishEventInput
from quantum import outbox as carriers
from quantum.worker import new_worker
from workflows import WORKFLOWS
from workflows.models import RunStatusView
from workflows.outbox import EVENTS_HEADER, REPUBLISH_WITHIN
from workflows.saga import Run

from .conftest import Harness
from .test_flow import announced

pytestmark = pytest.mark.timeout(180)


def carried_events(history: WorkflowHistory) -> list[tuple[str, list[str]]]:
    """(activity type, [event types carried]) of each activity the run scheduled."""
    found = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            header = attributes.header.fields.get(EVENTS_HEADER)
            types = [e["type"] for e in json.loads(header.data)] if header is not None else []
            found.append((attributes.activity_type.name, types))
    return found


def local_activities(history: WorkflowHistory) -> int:
    return sum(
        e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_local_activity"
        for e in history.events
    )


async def test_a_run_schedules_only_its_stages_and_its_events_ride_on_them(harness: Harness, nc: NATS) -> None:
    async with harness.worker():
        handle = await harness.start_pipeline()
        await handle.result()
    history = await handle.fetch_history()
    carried = carried_events(history)
    assert not [name for name, _ in carried if name.startswith("events.")]
    assert carried[0][1] == ["quantum.pipeline.started"]  # the first activity takes the run's first event
    assert sum(len(types) for _, types in carried) == 7
    assert local_activities(history) == 1  # the last stage's event and the run's end, together
    on_the_bus = [t for t, _ in await announced(nc, handle.id)]
    assert on_the_bus == ["quantum.pipeline.started", *["quantum.stage.completed"] * 7, "quantum.pipeline.completed"]


@workflow.defn(name="OutboxProbe", sandboxed=False)
class OutboxProbe:
    """Announces a stage, then schedules an activity on a queue nobody polls and cancels it before it starts."""

    @workflow.init
    def __init__(self, project: str) -> None:
        view = RunStatusView(pipeline_id=workflow.info().workflow_id, workflow="OutboxProbe")
        self._run = Run(view, policy=ApprovalPolicy(), requester="alice", project=project)

    @workflow.run
    async def run(self, project: str) -> None:
        async def body() -> None:
            view = self._run.view
            await self._run.announce(
                "quantum.stage.completed",
                "stage.generate_code.completed",
                StageCompleted(pipeline_id=view.pipeline_id, stage="generate_code"),
            )
            nowhere = workflow.start_activity(
                "agents.nowhere",
                task_queue=f"{workflow.info().task_queue}-unpolled",
                start_to_close_timeout=timedelta(seconds=30),
            )
            await workflow.sleep(0.2)
            nowhere.cancel()
            try:
                await nowhere
            except ActivityError:
                pass

        await self._run.execute(body)


async def test_a_carrier_that_never_ran_gives_its_events_back(harness: Harness, nc: NATS) -> None:
    async with new_worker(
        harness.client, harness.agents.activities(), task_queue=harness.task_queue, workflows=[OutboxProbe]
    ):
        handle = await harness.client.start_workflow(
            OutboxProbe.run, harness.project, id=f"probe-{uuid.uuid4()}", task_queue=harness.task_queue
        )
        await handle.result()
    history = await handle.fetch_history()
    assert carried_events(history) == [("agents.nowhere", ["quantum.pipeline.started", "quantum.stage.completed"])]
    assert local_activities(history) == 1  # the two given back go out with the run's end
    on_the_bus = [t for t, _ in await announced(nc, handle.id)]
    assert on_the_bus == ["quantum.pipeline.started", "quantum.stage.completed", "quantum.pipeline.completed"]


async def test_a_replayer_without_the_outbox_interceptor_says_what_is_missing(harness: Harness) -> None:
    async with harness.worker():
        request = {"project": "slugs", "prompt": "a slugify helper", "requested_by": "alice"}
        handle = await harness.start("CodeGenerationWorkflow", request, prefix="codegen")
        await handle.result()
    history = await handle.fetch_history()
    bare = Replayer(workflows=list(WORKFLOWS), data_converter=pydantic_data_converter)
    result = await bare.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "no outbox interceptor" in str(result.replay_failure)


# --- the worker's half, in an activity context -------------------------------------------------------------------


def event(step: str) -> PublishEventInput:
    return PublishEventInput(
        type="quantum.stage.completed",
        data={"pipeline_id": "pipeline-x", "stage": step},
        workflow_id="pipeline-x",
        step=f"stage.{step}.completed",
    )


class Bus:
    """A publish that fails as told, recording what it published."""

    def __init__(self, failures: list[BaseException] | None = None) -> None:
        self.failures = failures or []
        self.published: list[str] = []

    async def __call__(self, inp: PublishEventInput) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.published.append(inp.step)


def environment(*, attempt: int = 1, scheduled_ago: timedelta = timedelta(0)) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt, scheduled_time=datetime.now(UTC) - scheduled_ago)
    return env


async def _carry(bus: Bus | None, events: list[PublishEventInput], env: ActivityEnvironment) -> None:
    publishing = carriers._PublishCarried(None, bus)  # type: ignore[arg-type]  # noqa: SLF001
    await env.run(publishing._publish, events)  # noqa: SLF001


async def test_a_carrier_waits_out_a_bus_that_is_away_a_moment() -> None:
    bus = Bus([ConnectionRefusedError("the bus restarting"), TimeoutError("no reply")])
    await _carry(bus, [event("a"), event("b")], environment())
    assert bus.published == ["stage.a.completed", "stage.b.completed"]


async def test_a_carrier_gives_up_on_a_bus_away_past_its_patience_and_runs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Tries 0.5 s apart, then 1 s: with 2 s of patience, a third try would start too late, so the event is counted
    as unpublished, and the next event is tried afresh."""
    monkeypatch.setattr(carriers, "PATIENCE", 2.0)
    bus = Bus([ConnectionRefusedError("the bus is away")] * 3)
    before = _unpublished()
    await _carry(bus, [event("a"), event("b")], environment())
    assert _unpublished() == before + 1
    assert bus.published == ["stage.b.completed"] and bus.failures == []
    assert caplog.text.count("failed (ConnectionRefusedError: the bus is away); trying again") == 2
    assert "was not published: ConnectionRefusedError: the bus is away" in caplog.text


async def test_an_event_the_bus_refuses_is_counted_and_the_others_go_out() -> None:
    refused = ApplicationError("too large", type="InvalidEvent", non_retryable=True)
    bus = Bus([refused])
    before = _unpublished()
    await _carry(bus, [event("a"), event("b")], environment())
    assert bus.published == ["stage.b.completed"]
    assert _unpublished() == before + 1


async def test_a_retried_carrier_publishes_again_only_inside_the_duplicate_window() -> None:
    soon, late = Bus(), Bus()
    await _carry(soon, [event("a")], environment(attempt=2, scheduled_ago=timedelta(seconds=5)))
    await _carry(late, [event("a")], environment(attempt=2, scheduled_ago=REPUBLISH_WITHIN + timedelta(seconds=1)))
    assert soon.published == ["stage.a.completed"]  # dropped by JetStream if the first attempt published it
    assert late.published == []  # the first attempt published it first thing; a repeat could be a duplicate


async def test_a_worker_without_a_publisher_counts_what_it_carries_as_unpublished() -> None:
    before = _unpublished()
    await _carry(None, [event("a")], environment())
    assert _unpublished() == before + 1


def _unpublished() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("quantum_events_unpublished_total", {"type": "quantum.stage.completed"}) or 0.0
