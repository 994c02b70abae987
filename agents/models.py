"""Inputs and results of every agent activity.

Each activity takes one model and returns one, so fields can be added compatibly. Every activity is keyed by
``run_id`` (the id of the workflow that runs it) and is idempotent: running it twice for the same run does no harm.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Impact = Literal["LOW", "MEDIUM", "HIGH"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunRef(_Model):
    """Names the run whose artifacts, resources or deployment an activity acts on."""

    run_id: str


# --- QAgent: code generation -------------------------------------------------------------------------------------


class GenerateCodeInput(_Model):
    run_id: str
    project: str
    prompt: str
    language: str = "python"
    source: dict[str, str] = Field(default_factory=dict)
    required_names: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Code names the request's acceptance examples call; a pattern must define them to serve it.",
    )


class ArtifactFile(_Model):
    path: str = Field(description="Relative to the run's workspace.")
    sha256: str
    size: int


class GeneratedCode(_Model):
    run_id: str
    workspace: str
    module: str = Field(description="Importable name of the generated package/module.")
    files: list[ArtifactFile]
    provider: str = Field(description="Who wrote the code, e.g. 'offline-patterns' or 'openai-compatible'.")
    model: str | None = None
    pattern: str | None = Field(default=None, description="The library pattern the code came from, if any.")
    pattern_score: float = Field(default=0.0, description="How much of the request the pattern explains, 0 to 1.")
    runner_up: str | None = Field(default=None, description="The next pattern the offline provider considered.")
    runner_up_score: float = 0.0
    notes: list[str] = Field(default_factory=list)
    provenance: str | None = Field(default=None, description="Path of the in-toto statement beside the artifacts.")
    prompt_sha256: str | None = None


class CodeValidation(_Model):
    ok: bool
    files_checked: int
    errors: list[str] = Field(default_factory=list)


class Fingerprint(_Model):
    digest: str = Field(description="sha256 over the sorted (path, sha256) pairs.")
    files: dict[str, str]


class CleanupResult(_Model):
    removed: list[str] = Field(default_factory=list)


# --- QTest: test generation and execution -------------------------------------------------------------------------


class GenerateTestsInput(_Model):
    run_id: str
    module: str
    prompt: str
    pattern: str | None = None


class GeneratedTests(_Model):
    run_id: str
    files: list[ArtifactFile]
    provider: str
    test_count: int


class ExecuteTestsInput(_Model):
    run_id: str
    module: str
    timeout_seconds: float = 180.0
    mutants: int = Field(default=4, ge=0, le=20, description="Broken variants the tests must catch (0: none).")
    min_mutation_score: float = Field(
        default=0.0, ge=0, le=1, description="The policy's score; above 0, a run that yields no score has a problem."
    )


class TestReport(_Model):
    __test__ = False

    passed: int
    failed: int
    errors: int
    skipped: int = 0
    coverage: float = Field(description="Line coverage of the generated code, percent.")
    duration_seconds: float
    junit_report: str = Field(description="Path of the JUnit XML report.")
    isolation: str = Field(description="How the tests were isolated (e.g. 'bwrap', 'unshare', 'rlimits').")
    timed_out: bool = False
    output_tail: str = ""
    mutants_total: int = 0
    mutants_killed: int = 0
    mutation_score: float | None = Field(default=None, description="Share of mutants the tests caught, 0 to 1.")
    surviving_mutants: list[str] = Field(default_factory=list)
    problems: list[str] = Field(
        default_factory=list,
        description="Why the result cannot be trusted (a report missing, unreadable or contradicting pytest's exit "
        "status; a mutation score that could not be measured). Any problem fails the test policy.",
    )


# --- QSecure: security scanning -----------------------------------------------------------------------------------


class ScanInput(_Model):
    run_id: str


class Finding(_Model):
    tool: str
    rule_id: str
    severity: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
    confidence: Literal["LOW", "MEDIUM", "HIGH"]
    file: str
    line: int
    message: str

    @property
    def critical(self) -> bool:
        return self.severity == "CRITICAL"


class ScanReport(_Model):
    tools: list[str]
    scanned_files: int
    findings: list[Finding]
    criticals: int


# --- QInfra: infrastructure ---------------------------------------------------------------------------------------


ResourceName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
"""A project or resource name, which becomes part of a path and a stream name."""


class ResourceSpec(_Model):
    kind: Literal["directory", "stream"]
    name: ResourceName
    subjects: list[str] = Field(default_factory=list)
    max_bytes: int = 64 * 1024 * 1024
    max_age_seconds: int = 0


class PlanInfraInput(_Model):
    run_id: str
    project: ResourceName
    environment: str
    resources: list[ResourceSpec]


class PlannedChange(_Model):
    action: Literal["create", "update", "noop"]
    kind: str
    name: str
    address: str = Field(description="Directory path or JetStream stream name.")
    detail: str = ""


class InfraPlan(_Model):
    run_id: str
    project: str
    environment: str
    changes: list[PlannedChange]
    resources: list[ResourceSpec] = Field(default_factory=list, description="The specs the plan was made from.")
    impact: Impact
    reasons: list[str] = Field(default_factory=list)


class ProvisionedResource(_Model):
    kind: str
    name: str
    address: str


class ProvisionResult(_Model):
    resources: list[ProvisionedResource]


class DestroyResult(_Model):
    removed: list[str] = Field(default_factory=list)


# --- deployment -----------------------------------------------------------------------------------------------------


class DeployInput(_Model):
    run_id: str
    project: str
    environment: str
    release: str = Field(description="Fingerprint digest of the code being released.")


class Deployment(_Model):
    run_id: str
    url: str
    pid: int
    port: int
    release: str


class VerifyResult(_Model):
    healthy: bool
    status_code: int | None = None
    release_matches: bool = False
    detail: str = ""


class RollbackResult(_Model):
    stopped: bool
    detail: str = ""


# --- QSRE: monitoring -----------------------------------------------------------------------------------------------


class MonitoringInput(_Model):
    run_id: str
    project: str
    environment: str
    deployment_url: str


class MonitoringSetup(_Model):
    target: str
    files: list[str]
    scrape_ok: bool
