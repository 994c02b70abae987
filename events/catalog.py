"""Every event type the product accepts or announces, with the model of its ``data``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    model_serializer,
)

from events.envelope import CloudEvent, InvalidEvent, UnknownEventType, describe
from events.models import (
    MAX_COMMENT_CHARS,
    CodeRequest,
    InfraRequest,
    Person,
    PipelineRequest,
    ReviewInput,
    at_edge,
)

RunId = str
InboundRunId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
"""The id of a run an inbound event acts on: any workflow id up to 255 characters without control characters."""


class _Data(BaseModel):
    """An event's data: tolerant of unknown fields as a payload (inbound data is validated with ``EDGE``)."""

    model_config = ConfigDict(extra="ignore")


class ReviewSubmitted(ReviewInput):
    """``quantum.review.submitted``: a review of a run's gate, turned into the ``review`` signal."""

    model_config = ConfigDict(extra="forbid")

    pipeline_id: InboundRunId


class CancelRequested(_Data):
    """``quantum.pipeline.cancel_requested``: cancel a run; its compensations run."""

    pipeline_id: InboundRunId
    requested_by: Person
    reason: str = Field(default="", max_length=MAX_COMMENT_CHARS)


class PipelineStarted(_Data):
    pipeline_id: RunId
    workflow: str
    project: str
    requested_by: str
    environment: str | None = None


class StageCompleted(_Data):
    pipeline_id: RunId
    stage: str
    outputs: dict[str, Any] = Field(default_factory=dict)


class StageFailed(_Data):
    pipeline_id: RunId
    stage: str
    error: str


class _NamesReviewers(_Data):
    """Who may review: names and groups (``groups`` left out when empty, for consumers from before it)."""

    reviewers: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.groups:
            data.pop("groups", None)
        return data


class ReviewRequested(_NamesReviewers):
    pipeline_id: RunId
    gate: str
    reason: str
    required_approvals: int = 1
    timeout_seconds: float
    digest: str | None = Field(default=None, description="The sha256 of what the gate asks about.")
    challenge: str | None = Field(
        default=None, description="What a signed review of this gate opening must sign (see docs/security.md)."
    )


class ReviewReminder(_NamesReviewers):
    """A gate has waited half its timeout: the reviewers are reminded."""

    pipeline_id: RunId
    gate: str
    waited_seconds: float
    timeout_seconds: float
    approvals: int = 0
    required_approvals: int = 1


class ReviewEscalated(ReviewReminder):
    """A gate has waited 80 % of its timeout: the policy's escalation contacts are told."""

    contacts: list[str] = Field(default_factory=list)


class CompensationCompleted(_Data):
    pipeline_id: RunId
    step: str
    outcome: Literal["completed", "failed"]
    error: str | None = None


class PipelineCompleted(_Data):
    pipeline_id: RunId
    status: Literal["succeeded"]
    outputs: dict[str, Any] = Field(default_factory=dict)


class PipelineFailed(_Data):
    pipeline_id: RunId
    status: Literal["failed", "rejected", "timed_out", "cancelled"]
    error: str
    compensations: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True)
class EventType:
    """One event type: its name, the model of its data, and for inbound ones what it does."""

    name: str
    data: type[BaseModel]
    direction: Literal["inbound", "outbound"]
    summary: str
    workflow: str | None = None
    id_prefix: str | None = None


INBOUND: dict[str, EventType] = {
    t.name: t
    for t in (
        EventType(
            "quantum.pipeline.requested",
            PipelineRequest,
            "inbound",
            "Start a DevSecOps pipeline run.",
            "DevSecOpsPipelineWorkflow",
            "pipeline",
        ),
        EventType(
            "quantum.code.requested",
            CodeRequest,
            "inbound",
            "Generate code on its own.",
            "CodeGenerationWorkflow",
            "codegen",
        ),
        EventType(
            "quantum.infra.requested",
            InfraRequest,
            "inbound",
            "Provision infrastructure on its own.",
            "InfraProvisionWorkflow",
            "infra",
        ),
        EventType(
            "quantum.review.submitted",
            ReviewSubmitted,
            "inbound",
            "Approve or reject a gate of a run (becomes the `review` Update; one the run refuses goes to the dead "
            "letters with the run's reason).",
        ),
        EventType(
            "quantum.pipeline.cancel_requested",
            CancelRequested,
            "inbound",
            "Cancel a run; what it did is compensated.",
        ),
    )
}

OUTBOUND: dict[str, EventType] = {
    t.name: t
    for t in (
        EventType("quantum.pipeline.started", PipelineStarted, "outbound", "A run started."),
        EventType("quantum.stage.completed", StageCompleted, "outbound", "A stage succeeded."),
        EventType("quantum.stage.failed", StageFailed, "outbound", "A stage failed."),
        EventType("quantum.review.requested", ReviewRequested, "outbound", "A gate waits for reviews."),
        EventType("quantum.review.reminder", ReviewReminder, "outbound", "A gate has waited half its timeout."),
        EventType(
            "quantum.review.escalated",
            ReviewEscalated,
            "outbound",
            "A gate has waited 80 % of its timeout: its escalation contacts are told.",
        ),
        EventType(
            "quantum.compensation.completed",
            CompensationCompleted,
            "outbound",
            "A compensation ran (completed or failed).",
        ),
        EventType("quantum.pipeline.completed", PipelineCompleted, "outbound", "A run succeeded."),
        EventType(
            "quantum.pipeline.failed",
            PipelineFailed,
            "outbound",
            "A run ended failed, rejected, timed out or cancelled.",
        ),
    )
}

ALL: dict[str, EventType] = {**INBOUND, **OUTBOUND}


def inbound_data(event: CloudEvent) -> tuple[EventType, BaseModel]:
    """The inbound type of ``event`` and its validated data; an :class:`EventError` when either is wrong."""
    kind = INBOUND.get(event.type)
    if kind is None:
        named = event.type if len(event.type) <= 200 else f"{event.type[:200]}… ({len(event.type)} characters)"
        raise UnknownEventType(f"unknown event type {named!r}; accepted: {', '.join(INBOUND)}")
    try:
        return kind, at_edge(kind.data, event.data)
    except ValidationError as err:
        raise InvalidEvent(describe(err, prefix="data.")) from None


def workflow_id(kind: EventType, event_id: str) -> str:
    """``pipeline-<event id>`` and the like: a redelivered or duplicated event never starts a second run."""
    return f"{kind.id_prefix}-{event_id}"
