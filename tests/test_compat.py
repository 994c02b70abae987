"""Rolling upgrades: payloads between workers of different versions.

A worker reads what a later one wrote: every workflow input, activity input and signal recorded in the replay
histories (real payloads of every version since the first) still decodes with today's models, and also with a field
from the future added at every level. What a request leaves out takes its default. The edges stay strict: a field
nobody knows, from a person or a client, is refused there by name.
"""

from __future__ import annotations

import base64
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from events.catalog import InvalidEvent, inbound_data
from events.envelope import new_event
from events.models import PipelineRequest, ReviewDecision
from quantum.requests import RequestError, load_model
from quantum.settings import Settings
from quantum.worker import activity_name, build_agents
from workflows import WORKFLOWS

HISTORIES = Path(__file__).parent / "replay" / "histories"
FUTURE = "field_added_by_a_later_version"


def activity_models(tmp_path: Path) -> dict[str, type[BaseModel]]:
    """Each activity's input model, by activity name."""
    agents = build_agents(Settings(data_dir=tmp_path, _env_file=None))  # type: ignore[call-arg]
    found: dict[str, type[BaseModel]] = {}
    for fn in agents.activities():
        hints = typing.get_type_hints(fn)
        params = [v for k, v in hints.items() if k != "return"]
        if params and isinstance(params[0], type) and issubclass(params[0], BaseModel):
            found[activity_name(fn)] = params[0]
    return found


def workflow_models() -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for wf in WORKFLOWS:
        definition = wf.__temporal_workflow_definition  # type: ignore[attr-defined]
        hints = typing.get_type_hints(definition.run_fn)
        found[definition.name] = next(v for k, v in hints.items() if k != "return")
    return found


def payloads(event: dict[str, Any], key: str) -> list[Any]:
    raw = event.get(key, {}).get("input", {}).get("payloads", [])
    return [json.loads(base64.b64decode(p["data"])) for p in raw if p.get("data")]


def recorded() -> Iterator[tuple[str, str, Any]]:
    """(kind, name, payload) for every workflow input, activity input and review signal in the histories."""
    for path in sorted(HISTORIES.glob("*.json")):
        for event in json.loads(path.read_text())["events"]:
            started = event.get("workflowExecutionStartedEventAttributes")
            if started:
                for value in payloads(event, "workflowExecutionStartedEventAttributes"):
                    yield "workflow", started["workflowType"]["name"], value
            scheduled = event.get("activityTaskScheduledEventAttributes")
            if scheduled:
                for value in payloads(event, "activityTaskScheduledEventAttributes"):
                    yield "activity", scheduled["activityType"]["name"], value
            signalled = event.get("workflowExecutionSignaledEventAttributes")
            if signalled and signalled["signalName"] == "review":
                for value in payloads(event, "workflowExecutionSignaledEventAttributes"):
                    yield "signal", "review", value


def with_future_fields(annotation: Any, value: Any) -> Any:
    """``value`` (of type ``annotation``) with a field from the future in every model object, at every level;
    maps and lists of models are followed, free-form data is left as it is."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return with_future_fields(args[0], value)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return with_future_fields(models[0], value) if len(models) == 1 else value
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, dict):
        fields = {f.alias or n: f for n, f in annotation.model_fields.items()} | dict(annotation.model_fields)
        grown = {k: with_future_fields(fields[k].annotation, v) if k in fields else v for k, v in value.items()}
        return {**grown, FUTURE: {"any": ["shape", 1]}}
    if origin in (list, tuple) and isinstance(value, list) and args:
        return [with_future_fields(args[0], v) for v in value]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {k: with_future_fields(args[1], v) for k, v in value.items()}
    return value


def test_every_recorded_payload_decodes_with_fields_from_a_later_version(tmp_path: Path) -> None:
    models = {
        "activity": activity_models(tmp_path),
        "workflow": workflow_models(),
        "signal": {"review": ReviewDecision},
    }
    seen: dict[str, int] = {}
    for kind, name, value in recorded():
        model = models[kind].get(name)
        if model is None or not isinstance(value, dict):
            continue  # an activity without a model input (a run id string, nothing)
        today = model.model_validate(value)
        later = model.model_validate(with_future_fields(model, value))
        assert later.model_dump() == today.model_dump(), f"{kind} {name}: a later field changed what was read"
        seen[kind] = seen.get(kind, 0) + 1
    assert seen.get("workflow", 0) >= 20 and seen.get("activity", 0) >= 100 and seen.get("signal", 0) >= 5, seen


def test_a_request_from_an_earlier_client_takes_the_defaults() -> None:
    earliest = {"project": "slugs", "prompt": "a slugify helper", "requested_by": "ann"}
    request = PipelineRequest.model_validate(earliest)
    assert request.environment == "dev" and not request.infrastructure and request.acceptance is None
    assert request.approval_policy.gates == {} and request.approval_policy.requester_may_review is None


def test_the_edges_refuse_a_field_nobody_knows_by_name(tmp_path: Path) -> None:
    typo = {"project": "slugs", "prompt": "a slugify helper", "requested_by": "ann", "aproval_policy": {}}
    with pytest.raises(InvalidEvent, match="aproval_policy"):
        inbound_data(new_event("quantum.pipeline.requested", typo, source="tests"))
    nested = {**typo, "approval_policy": {"reviewers": ["bob"], "gates": {"deploy": {"quorum": 2}}}}
    nested.pop("aproval_policy")
    with pytest.raises(InvalidEvent, match=r"approval_policy\.gates\.deploy\.quorum"):
        inbound_data(new_event("quantum.pipeline.requested", nested, source="tests"))
    file = tmp_path / "request.json"
    file.write_text(json.dumps(typo))
    with pytest.raises(RequestError, match="aproval_policy"):
        load_model(file, PipelineRequest)
    with pytest.raises(ValidationError):  # a review as a person sends it
        from events.models import ReviewInput

        ReviewInput.model_validate({"gate": "deploy", "reviewer": "bob", "approved": True, "aproved": False})
