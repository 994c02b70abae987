"""Requests and decisions that cross the bus, and that the workflows take as input and signal payloads.

Every model here is plain JSON through the pydantic data converter, so the stock ``temporal`` CLI and any NATS
client can produce them.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Gate = Literal["security", "infra", "deploy"]
GATES: tuple[str, ...] = ("security", "infra", "deploy")
Environment = Literal["dev", "staging", "prod"]

DEFAULT_GATE_TIMEOUT_SECONDS = 24 * 60 * 60
DEFAULT_MIN_COVERAGE = 85.0
MAX_SOURCE_FILES = 50
MAX_SOURCE_BYTES = 512 * 1024
MAX_SOURCE_PATH_CHARS = 200
MAX_PATH_PART_CHARS = 100
MAX_RESOURCES = 20
MAX_SUBJECTS = 10
MAX_REVIEWERS = 50
MAX_NAME_CHARS = 100
MAX_COMMENT_CHARS = 2000
MAX_GATE_CHARS = 32
MAX_GATE_TIMEOUT_SECONDS = 30 * 24 * 60 * 60
MAX_STREAM_BYTES = 1024**4
RESERVED_SUBJECT_PREFIXES = ("quantum.", "$", "_INBOX.", "*.", ">.")
"""Bounds on every field a request or a review carries into a run's state (and so into its history and queries)."""

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
"""A project or resource name: lower-case letters, digits, ``-`` and ``_``, starting with a letter."""
Person = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$"),
]
"""A person's name: 1 to 100 characters, no control characters."""
Comment = Annotated[str, StringConstraints(max_length=MAX_COMMENT_CHARS)]

_SPACES = re.compile(r"\s+")


def _has_control_character(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def normalise_identity(name: str) -> str:
    """The form in which names are compared: Unicode NFKC, case-folded, inner spaces collapsed, trimmed.

    ``Ann``, ``ann`` and `` ANN `` are one person; so are ``ｅｒｉｎ`` (full-width) and ``erin``.
    """
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", name).casefold()).strip()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApprovalPolicy(_Strict):
    """Who may review a run's gates, how many approvals each gate needs and how long it waits."""

    reviewers: list[Person] = Field(
        default_factory=list,
        max_length=MAX_REVIEWERS,
        description="Names allowed to review; empty allows anyone but the requester.",
    )
    required_approvals: dict[Gate, Annotated[int, Field(ge=1, le=10)]] = Field(default_factory=dict)
    timeout_seconds: dict[Gate, Annotated[float, Field(gt=0, le=MAX_GATE_TIMEOUT_SECONDS)]] = Field(
        default_factory=dict
    )

    def approvals_for(self, gate: str) -> int:
        return int(self.required_approvals.get(gate, 1))  # type: ignore[call-overload]

    def timeout_for(self, gate: str) -> float:
        return float(self.timeout_seconds.get(gate, DEFAULT_GATE_TIMEOUT_SECONDS))  # type: ignore[call-overload]

    @model_validator(mode="after")
    def _quorum_is_reachable(self) -> ApprovalPolicy:
        allowed = len({normalise_identity(name) for name in self.reviewers})
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
    subjects: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.*>-]{1,200}$")]] = Field(
        default_factory=list, max_length=MAX_SUBJECTS
    )
    max_bytes: int = Field(default=64 * 1024 * 1024, gt=0, le=MAX_STREAM_BYTES)
    max_age_seconds: int = Field(default=0, ge=0, le=10 * 365 * 24 * 3600)

    @model_validator(mode="after")
    def _subjects_only_for_streams(self) -> InfraResource:
        if self.kind != "stream" and self.subjects:
            raise ValueError(f"subjects only apply to streams, not to a {self.kind}")
        for subject in self.subjects:
            if subject.startswith(RESERVED_SUBJECT_PREFIXES) or subject in {">", "*"}:
                raise ValueError(
                    f"subject {subject!r} is reserved (the product's own bus, JetStream's API, reply inboxes)"
                )
        return self


_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def source_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a source file, or None when it can.

    A source path is relative, made of plain names (letters, digits, ``_``, ``.``, ``-``; none starting with ``.``
    or ``-``, none empty), each at most 100 characters and 200 in all, and ends in ``.py``: nothing a file system,
    a scanner's exclusions or a shell would read differently.
    """
    if len(path) > MAX_SOURCE_PATH_CHARS:
        return f"is {len(path)} characters long, over the {MAX_SOURCE_PATH_CHARS} limit"
    if _has_control_character(path):
        return "contains a control character (NUL, newline...)"
    if not path.endswith(".py"):
        return "must end in .py"
    for part in path.split("/"):
        if len(part) > MAX_PATH_PART_CHARS:
            return f"has a part {len(part)} characters long, over the {MAX_PATH_PART_CHARS} limit"
        if part in {"", ".", ".."} or part == "__pycache__" or not _PATH_PART.match(part):
            return (
                f"has the part {part!r}: parts are letters, digits, '_', '.' and '-', not starting with '.' or '-'"
                if part
                else "has an empty part (a leading, trailing or doubled '/')"
            )
    return None


def _check_source(source: dict[str, str]) -> dict[str, str]:
    if len(source) > MAX_SOURCE_FILES:
        raise ValueError(f"at most {MAX_SOURCE_FILES} source files, got {len(source)}")
    total = 0
    for path, content in source.items():
        problem = source_path_problem(path)
        if problem:
            raise ValueError(f"source path {path[:MAX_SOURCE_PATH_CHARS]!r} {problem}")
        total += len(content.encode(errors="surrogatepass"))
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
    infrastructure: list[InfraResource] | None = Field(default=None, max_length=MAX_RESOURCES)
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
    resources: list[InfraResource] = Field(min_length=1, max_length=MAX_RESOURCES)
    approval_policy: ApprovalPolicy = Field(default_factory=ApprovalPolicy)


class ReviewDecision(BaseModel):
    """The payload of the ``review`` signal: one reviewer's decision on one gate.

    Decoded leniently on purpose: a review naming an unknown gate, or carrying an over-long comment, still reaches
    the workflow, which refuses it and records why (with a bounded copy) in the audit trail, instead of the SDK
    dropping it silently. :meth:`problem` says what the workflow refuses for size or shape; the edges (the CLI, the
    ``quantum.review.submitted`` event) validate with :class:`ReviewInput` before anything is sent.
    """

    model_config = ConfigDict(extra="ignore")

    gate: str
    reviewer: str
    approved: bool
    comment: str = ""

    def problem(self) -> str | None:
        """Why this review cannot be taken whoever sent it (a missing name, a field over its bound), or None."""
        if len(self.gate) > MAX_GATE_CHARS:
            return f"the gate name is {len(self.gate)} characters long, over the {MAX_GATE_CHARS} limit"
        if len(self.reviewer) > MAX_NAME_CHARS:
            return f"the reviewer name is {len(self.reviewer)} characters long, over the {MAX_NAME_CHARS} limit"
        if not normalise_identity(self.reviewer):
            return "the review names no reviewer"
        if _has_control_character(self.reviewer):
            return "the reviewer name contains a control character"
        if len(self.comment) > MAX_COMMENT_CHARS:
            return f"the comment is {len(self.comment)} characters long, over the {MAX_COMMENT_CHARS} limit"
        return None


class ReviewInput(BaseModel):
    """A review as a person or a client sends it, validated strictly before it is sent (the CLI, the bus)."""

    model_config = ConfigDict(extra="forbid")

    gate: Annotated[str, StringConstraints(min_length=1, max_length=MAX_GATE_CHARS)]
    reviewer: Person
    approved: bool
    comment: Comment = ""

    def decision(self) -> ReviewDecision:
        return ReviewDecision(gate=self.gate, reviewer=self.reviewer, approved=self.approved, comment=self.comment)
