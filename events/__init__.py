"""The bus boundary: the vocabulary that crosses NATS (requests, review decisions, event data) and subject naming.

This package knows nothing of ``agents`` nor of anything above it.
"""

from events.models import (
    DEFAULT_GATE_TIMEOUT_SECONDS,
    GATES,
    ApprovalPolicy,
    CodeRequest,
    InfraRequest,
    InfraResource,
    PipelineRequest,
    ReviewDecision,
    ReviewInput,
    TestPolicy,
    normalise_identity,
)

__all__ = [
    "DEFAULT_GATE_TIMEOUT_SECONDS",
    "GATES",
    "ApprovalPolicy",
    "CodeRequest",
    "InfraRequest",
    "InfraResource",
    "PipelineRequest",
    "ReviewDecision",
    "ReviewInput",
    "TestPolicy",
    "normalise_identity",
]
