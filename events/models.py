"""Requests and decisions that cross the bus, and that the workflows take as input and signal payloads.

Every model here is plain JSON through the pydantic data converter, so the stock ``temporal`` CLI and any NATS
client can produce them.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Gate = Literal["security", "infra", "deploy"]
GATES: tuple[str, ...] = ("security", "infra", "deploy")
Environment = Literal["dev", "staging", "prod"]

DEFAULT_GATE_TIMEOUT_SECONDS = 24 * 60 * 60
DEFAULT_MIN_COVERAGE = 85.0
MAX_SOURCE_FILES = 50
MAX_SOURCE_BYTES = 512 * 1024

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
"""A project or resource name: lower-case letters, digits, ``-`` and ``_``, starting with a letter."""
Person = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApprovalPolicy(_Strict):
    """Who may review a run's gates, how many approvals each gate needs and how long it waits."""

    reviewers: list[Person] = Field(
        default_factory=list, description="Names allowed to review; empty allows anyone but the requester."
    )
    required_approvals: dict[Gate, Annotated[int, Field(ge=1, le=10)]] = Field(default_factory=dict)
    timeout_seconds: dict[Gate, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)

    def approvals_for(self, gate: str) -> int:
        return int(self.required_approvals.get(gate, 1))  # type: ignore[call-overload]

    def timeout_for(self, gate: str) -> float:
        return float(self.timeout_seconds.get(gate, DEFAULT_GATE_TIMEOUT_SECONDS))  # type: ignore[call-overload]

    @model_validator(mode="after")
    def _quorum_is_reachable(self) -> ApprovalPolicy:
        allowed = len(set(self.reviewers))
        for gate, count in self.required_approvals.items():
            if self.reviewers and count > allowed:
                raise ValueError(f"required_approvals.{gate} is {count} but only {allowed} reviewers are allowed")
        return self


class TestPolicy(_Strict):
    """What the test stage demands of the generated tests."""

    __test__ = False  # not a pytest test class

    min_coverage: float = Field(default=DEFAULT_MIN_COVERAGE, ge=0, le=100, description="Line coverage, percent.")
    mutants: int = Field(default=4, ge=0, le=20, description="Broken variants of the code the tests must catch.")
    min_mutation_score: float = Field(
        default=0.5, ge=0, le=1, description="Share of the mutants the tests must catch for them to count."
    )


class InfraResource(_Strict):
    """One resource to provision: a directory in the data dir or a JetStream stream on the bus."""

    kind: Literal["directory", "stream"]
    name: Name
    subjects: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.*>-]+$")]] = Field(default_factory=list)
    max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_age_seconds: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _subjects_only_for_streams(self) -> InfraResource:
        if self.kind != "stream" and self.subjects:
            raise ValueError(f"subjects only apply to streams, not to a {self.kind}")
        return self


def _check_source(source: dict[str, str]) -> dict[str, str]:
    if len(source) > MAX_SOURCE_FILES:
        raise ValueError(f"at most {MAX_SOURCE_FILES} source files, got {len(source)}")
    total = 0
    for path, content in source.items():
        normal = posixpath.normpath(path)
        if path.startswith("/") or normal.startswith("..") or "\\" in path or not path.endswith(".py"):
            raise ValueError(f"source path {path!r} must be a relative .py path inside the project")
        total += len(content.encode())
    if total > MAX_SOURCE_BYTES:
        raise ValueError(f"source files total {total} bytes, over the {MAX_SOURCE_BYTES} byte limit")
    return source


class PipelineRequest(_Strict):
    """The data of ``quantum.pipeline.requested`` and the input of ``DevSecOpsPipelineWorkflow``."""

    project: Name
    prompt: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=8000)]
    requested_by: Person
    environment: Environment = "dev"
    language: Literal["python"] = "python"
    infrastructure: list[InfraResource] | None = None
    approval_policy: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    test_policy: TestPolicy = Field(default_factory=TestPolicy)
    source: dict[str, str] = Field(default_factory=dict, description="Files to start from: path -> content.")

    _source = field_validator("source")(_check_source)

    @field_validator("infrastructure")
    @classmethod
    def _unique_resources(cls, value: list[InfraResource] | None) -> list[InfraResource] | None:
        if value:
            seen: set[tuple[str, str]] = set()
            for res in value:
                if (res.kind, res.name) in seen:
                    raise ValueError(f"{res.kind} {res.name!r} is listed twice")
                seen.add((res.kind, res.name))
        return value


class CodeRequest(_Strict):
    """The data of ``quantum.code.requested`` and the input of ``CodeGenerationWorkflow``."""

    project: Name
    prompt: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=8000)]
    requested_by: Person
    language: Literal["python"] = "python"
    source: dict[str, str] = Field(default_factory=dict)

    _source = field_validator("source")(_check_source)


class InfraRequest(_Strict):
    """The data of ``quantum.infra.requested`` and the input of ``InfraProvisionWorkflow``."""

    project: Name
    requested_by: Person
    environment: Environment = "dev"
    resources: list[InfraResource] = Field(min_length=1)
    approval_policy: ApprovalPolicy = Field(default_factory=ApprovalPolicy)


class ReviewDecision(BaseModel):
    """The payload of the ``review`` signal and the data of ``quantum.review.submitted``.

    ``gate`` is kept a plain string so that a review naming an unknown gate still reaches the workflow, which
    refuses it and records why in the audit trail instead of the SDK dropping it silently.
    """

    model_config = ConfigDict(extra="ignore")

    gate: str
    reviewer: Person
    approved: bool
    comment: str = ""
