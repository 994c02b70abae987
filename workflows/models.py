"""The status model the ``status`` query returns, and the results the workflows end with."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

RunStatus = Literal["running", "awaiting_review", "succeeded", "failed", "rejected", "timed_out", "cancelled"]
StageState = Literal["pending", "running", "succeeded", "failed", "skipped", "awaiting_review", "cancelled"]
GateState = Literal["pending", "approved", "rejected", "expired", "timed_out"]
"""``expired``: no decision within the timeout (``timed_out`` in the views of runs from before it)."""

PIPELINE_STAGES: tuple[str, ...] = (
    "generate_code",
    "generate_tests",
    "execute_tests",
    "security_scan",
    "plan_infra",
    "provision_infra",
    "deploy_application",
    "verify_deployment",
    "setup_monitoring",
)
CODEGEN_STAGES: tuple[str, ...] = ("validate_request", "generate_code", "validate_code", "fingerprint")
TESTED_CODEGEN_STAGES: tuple[str, ...] = ("validate_request", "generate_code", "generate_tests", "execute_tests")
INFRA_STAGES: tuple[str, ...] = ("plan_infra", "provision_infra")

MAX_ERROR_CHARS = 2000
MAX_WARNING_CHARS = 1000
MAX_WARNINGS = 50
MAX_REFUSED_REVIEWS = 50
MAX_REFUSED_COMMENT_CHARS = 500
"""Bounds that keep the status view (and so every query and the run's closing failure) far below Temporal's 2 MB
payload limit, whatever reviewers, events and activities send."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    note = f"… [{len(text) - limit} more characters]"
    return text[: max(0, limit - len(note))] + note


class CompensationRecord(BaseModel):
    step: str
    outcome: Literal["completed", "failed"]
    error: str | None = None


class AuditEntry(BaseModel):
    """A review the run received: accepted (and counted) or refused with the reason."""

    gate: str
    reviewer: str
    approved: bool
    comment: str = ""
    accepted: bool
    reason: str = ""
    digest: str = Field(default="", description="The digest the review named (empty: none).")
    nonce: str = Field(default="", description="The nonce of a signed review (empty: none).")
    identity: str = Field(
        default="",
        description="How the reviewer was known: 'ed25519:<key name>' (signature verified with that key) or "
        "'unauthenticated' (no keys configured: the name as given). Empty on refusals before it was looked at.",
    )


class GateOpening(BaseModel):
    """When a gate opened (workflow time), how long it waits and how many approvals it needs."""

    opened_at: datetime
    timeout_seconds: float
    required_approvals: int


class AttemptRecord(BaseModel):
    """One attempt of the generate, test and repair loop: who wrote the code, how it ended, what it cost."""

    attempt: int
    provider: str
    model: str | None = None
    outcome: Literal["passed", "failed"]
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


class RunStatusView(BaseModel):
    """What the ``status`` query returns (a contract: plain JSON, field names fixed)."""

    pipeline_id: str
    workflow: str
    status: RunStatus = "running"
    stage: str | None = None
    pending_gate: str | None = None
    stages: dict[str, StageState] = Field(default_factory=dict)
    gates: dict[str, GateState] = Field(default_factory=dict)
    approvals: dict[str, list[str]] = Field(default_factory=dict)
    gate_digests: dict[str, str] = Field(
        default_factory=dict, description="The sha256 of what each opened gate asks about; reviews may name it."
    )
    gate_openings: dict[str, GateOpening] = Field(
        default_factory=dict, description="When each gate opened, its timeout and quorum (empty in older runs)."
    )
    gate_challenges: dict[str, str] = Field(
        default_factory=dict,
        description="What a signed review of each gate's current opening must sign (empty in older runs).",
    )
    compensations: list[CompensationRecord] = Field(default_factory=list)
    audit: list[AuditEntry] = Field(default_factory=list)
    audit_dropped: int = Field(default=0, description="Refused reviews left out of ``audit`` to keep it bounded.")
    refused_reviews: dict[str, int] = Field(
        default_factory=dict, description="Refused reviews by kind of reason (the signal's; Updates never arrive)."
    )
    audit_records: int = Field(default=0, description="How many records the run appended to QUANTUM_AUDIT.")
    audit_head: str = Field(
        default="", description="The hash of the last record the run appended (the head of its chain)."
    )
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    outputs: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="Headline results: provider, coverage, findings, deployment URL..."
    )
    attempts: list[AttemptRecord] = Field(
        default_factory=list, description="Each attempt of the generate, test and repair loop (at most 10)."
    )


class PipelineResult(BaseModel):
    pipeline_id: str
    status: RunStatus
    outputs: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


class ReviewVerdict(BaseModel):
    """What the ``review`` Update returns for an accepted review (a refused one fails the Update with the reason)."""

    accepted: bool
    gate: str
    gate_state: GateState | None = None
    approvals: list[str] = Field(default_factory=list, description="The gate's approvals so far, this one included.")
    required_approvals: int = 1
    identity: str = ""
    reason: str = ""
