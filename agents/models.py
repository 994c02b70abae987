"""Inputs and results of every agent activity.

Each activity takes one model and returns one, so fields can be added compatibly. Every activity is keyed by
``run_id`` (the id of the workflow that runs it) and is idempotent: running it twice for the same run does no harm.
"""

from __future__ import annotations

import ast
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

Impact = Literal["LOW", "MEDIUM", "HIGH"]
MAX_ATTEMPTS = 10
MAX_FEEDBACK_CHARS = 6000
MAX_SPECIFICATION_CHARS = 300 * 1024
MAX_EXAMPLES = 100
MAX_EXAMPLE_ARGS = 50
MAX_EXPR_CHARS = 2000
MAX_DOTTED_CHARS = 200
MAX_HTTP_PATH_CHARS = 2000
MAX_JSON_DEPTH = 20
MAX_ACCEPTANCE_TESTS_BYTES = 64 * 1024
MAX_ACCEPTANCE_BYTES = 256 * 1024
MAX_ACCEPTANCE_FAILURES = 10
MAX_ACCEPTANCE_TEXT_CHARS = 500


class _Model(BaseModel):
    """An activity payload: tolerant of fields it does not know, so that a worker of an earlier version reads what
    a later one wrote (a rolling upgrade runs both at once)."""

    model_config = ConfigDict(extra="ignore")


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
    attempt: int = Field(default=1, ge=1, le=MAX_ATTEMPTS, description="Which attempt of the repair loop this is.")
    feedback: str = Field(
        default="", max_length=MAX_FEEDBACK_CHARS, description="Why the previous attempt failed, for the model."
    )
    max_tokens: int | None = Field(default=None, gt=0, description="What is left of the run's token budget.")
    specification: str = Field(
        default="", max_length=MAX_SPECIFICATION_CHARS, description="The request's acceptance checks, as text."
    )


class ModelUsage(_Model):
    """What a model-backed step used."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RememberInput(_Model):
    """A generation that passed its tests, the request's acceptance checks and the pipeline, to keep as context."""

    run_id: str
    project: str
    prompt: str
    module: str


class Remembered(_Model):
    name: str | None = None
    reason: str = ""


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
    usage: ModelUsage = Field(default_factory=ModelUsage)
    attempt: int = 1


class CodeValidation(_Model):
    ok: bool
    files_checked: int
    errors: list[str] = Field(default_factory=list)


class Fingerprint(_Model):
    digest: str = Field(description="sha256 over the sorted (path, sha256) pairs.")
    files: dict[str, str]


class CleanupResult(_Model):
    removed: list[str] = Field(default_factory=list)


def _without_none(data: dict[str, Any], key: str) -> dict[str, Any]:
    """``data`` without ``key`` when it is None: a field added later, left out when unused."""
    if data.get(key, ...) is None:
        data.pop(key)
    return data


# --- QTest: test generation and execution -------------------------------------------------------------------------


class GenerateTestsInput(_Model):
    run_id: str
    module: str
    prompt: str
    pattern: str | None = None
    attempt: int = Field(default=1, ge=1, le=MAX_ATTEMPTS)
    feedback: str = Field(default="", max_length=MAX_FEEDBACK_CHARS)
    max_tokens: int | None = Field(default=None, gt=0)


class GeneratedTests(_Model):
    run_id: str
    files: list[ArtifactFile]
    provider: str
    test_count: int
    usage: ModelUsage = Field(default_factory=ModelUsage)


# --- QTest: acceptance (the request is the specification) -----------------------------------------------------------
# The same models, field for field, as events/models.py's (agents and events import nothing of each other): the
# pipeline converts the request's ``acceptance`` into this one, and tests/agents/test_acceptance.py holds the two to
# one JSON Schema and one behaviour.

DottedName = Annotated[
    str,
    StringConstraints(max_length=MAX_DOTTED_CHARS, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"),
]
"""A Python name or a dotted path of names: ``slugify``, ``Stack.from_list``, ``json.JSONDecodeError``."""
Identifier = Annotated[str, StringConstraints(max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def _acceptance_problem(text: str) -> PydanticCustomError:
    """A validation error whose message is ``text`` as it is (no prefix, no template read in it)."""
    return PydanticCustomError("acceptance", "{problem}", {"problem": text})


def _nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether the lists and objects of ``value`` nest more than ``limit`` levels deep (counted without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, (list, tuple)):
            children = list(item)
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class _AsWritten(_Model):
    """Serialised with only the fields that were given: ``expect: null`` stays apart from no ``expect`` through
    every round trip (an event, a workflow input, an activity input)."""

    model_config = ConfigDict(extra="ignore", frozen=True, serialize_by_alias=True)

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        fields = type(self).model_fields
        unset = set(fields) - self.model_fields_set
        drop = unset | {fields[name].alias for name in unset if fields[name].alias}
        return {key: value for key, value in data.items() if key not in drop}


class HttpCall(_AsWritten):
    """An HTTP request to the module's server: ``make_server(port=0, host="127.0.0.1")`` started in the sandbox."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: Annotated[str, StringConstraints(max_length=MAX_HTTP_PATH_CHARS, pattern=r"^/[!-~]*$")] = Field(
        description="Starts with /; printable ASCII, no spaces."
    )
    body: JsonValue = Field(default=None, alias="json", description="JSON to send; absent sends no body.")


class AcceptanceExample(_AsWritten):
    """One example: a call, an expression or an HTTP request, and what it must give."""

    call: DottedName | None = Field(
        default=None, description="A function of the module under test by name or dotted path (Stack.from_list)."
    )
    args: list[JsonValue] = Field(default_factory=list, max_length=MAX_EXAMPLE_ARGS, description="Of the call.")
    kwargs: dict[Identifier, JsonValue] = Field(
        default_factory=dict, max_length=MAX_EXAMPLE_ARGS, description="Of the call."
    )
    expr: Annotated[str, StringConstraints(min_length=1, max_length=MAX_EXPR_CHARS)] | None = Field(
        default=None, description="A Python expression, evaluated with the module's names in scope."
    )
    http: HttpCall | None = None
    expect: JsonValue = Field(default=None, description="What the call or expression returns (JSON; null is a value).")
    raises: DottedName | None = Field(
        default=None, description="Instead of expect: the exception the call or expression raises (or a base of it)."
    )
    status: int = Field(default=200, ge=100, le=599, description="The HTTP status the request is answered with.")
    expect_json: JsonValue = Field(
        default=None, description="The JSON the request is answered with (null is a value); absent: not checked."
    )

    @model_validator(mode="before")
    @classmethod
    def _shallow(cls, data: Any) -> Any:
        if isinstance(data, dict):
            http = data.get("http")
            values = [data.get(key) for key in ("args", "kwargs", "expect", "expect_json")]
            values.append(http.get("json") if isinstance(http, dict) else None)
            if any(_nests_deeper_than(value, MAX_JSON_DEPTH) for value in values):
                raise _acceptance_problem(f"its JSON values nest deeper than {MAX_JSON_DEPTH} levels")
        return data

    @field_validator("expr")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ast.parse(value, mode="eval")
            except SyntaxError as err:
                where = f" at column {err.offset}" if err.offset else ""
                raise _acceptance_problem(f"does not parse as a Python expression: {err.msg}{where}") from None
            except ValueError as err:  # a NUL character
                raise _acceptance_problem(f"does not parse as a Python expression: {err}") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> AcceptanceExample:
        given = self.model_fields_set
        kinds = [kind for kind in ("call", "expr", "http") if getattr(self, kind) is not None]
        if len(kinds) != 1:
            raise _acceptance_problem(
                f"give one of call, expr or http, not {' and '.join(kinds)}"
                if kinds
                else "give one of call, expr or http"
            )
        expects = "expect" in given
        if self.http is None:
            if expects and self.raises is not None:
                raise _acceptance_problem("give expect or raises, not both")
            if not expects and self.raises is None:
                raise _acceptance_problem("give expect (what it returns) or raises (what it raises)")
            if given & {"status", "expect_json"}:
                raise _acceptance_problem("status and expect_json go with http examples")
        elif expects or self.raises is not None:
            raise _acceptance_problem("an http example checks status and expect_json, not expect or raises")
        if self.call is None and given & {"args", "kwargs"}:
            raise _acceptance_problem("args and kwargs go with call examples")
        return self


class Acceptance(_AsWritten):
    """What the code must do, whoever wrote it: examples and pytest tests run in the sandbox before the generated
    tests; any failure fails execute_tests."""

    examples: list[AcceptanceExample] = Field(default_factory=list, max_length=MAX_EXAMPLES)
    tests: Annotated[str, StringConstraints(max_length=MAX_ACCEPTANCE_TESTS_BYTES)] | None = Field(
        default=None, description="pytest text, run as acceptance/test_request.py (fixture `module`: the code)."
    )

    @field_validator("tests")
    @classmethod
    def _tests_parse(cls, value: str | None) -> str | None:
        if value is None:
            return value
        size = len(value.encode(errors="surrogatepass"))
        if size > MAX_ACCEPTANCE_TESTS_BYTES:
            raise _acceptance_problem(f"is {size} bytes long, over the {MAX_ACCEPTANCE_TESTS_BYTES} byte limit")
        try:
            ast.parse(value, filename="test_request.py")
        except SyntaxError as err:
            raise _acceptance_problem(f"does not parse as Python: line {err.lineno}: {err.msg}") from None
        except ValueError as err:  # a NUL character
            raise _acceptance_problem(f"does not parse as Python: {err}") from None
        return value

    @model_validator(mode="after")
    def _bounded(self) -> Acceptance:
        if not self.examples and not self.tests:
            raise _acceptance_problem("give examples, tests or both")
        size = len(self.model_dump_json().encode(errors="surrogatepass"))
        if size > MAX_ACCEPTANCE_BYTES:
            raise _acceptance_problem(f"is {size} bytes as JSON, over the {MAX_ACCEPTANCE_BYTES} byte limit")
        return self


class AcceptanceReport(_Model):
    """How the code fared against the request's acceptance examples and tests (run before the generated tests)."""

    total: int = 0
    passed: int = 0
    failed: int = Field(default=0, description="Examples and request tests that failed, errored or did not run.")
    failures: list[str] = Field(
        default_factory=list,
        max_length=MAX_ACCEPTANCE_FAILURES,
        description="The first failures, each naming its example: `example 2: slugify('Hello World') returned "
        "'hello_world', expected 'hello-world'`.",
    )
    duration_seconds: float = 0.0
    timed_out: bool = False
    problems: list[str] = Field(
        default_factory=list,
        max_length=MAX_ACCEPTANCE_FAILURES,
        description="Why the result cannot be trusted (a report missing, unreadable, contradicting pytest's exit "
        "status or leaving examples out). Any problem fails the stage.",
    )

    @property
    def ok(self) -> bool:
        """Every example and request test passed, within the time limit, and the result can be trusted."""
        return not (self.failed or self.problems or self.timed_out)


class ExecuteTestsInput(_Model):
    run_id: str
    module: str
    timeout_seconds: float = 180.0
    mutants: int = Field(default=4, ge=0, le=20, description="Broken variants the tests must catch (0: none).")
    min_mutation_score: float = Field(
        default=0.0, ge=0, le=1, description="The policy's score; above 0, a run that yields no score has a problem."
    )
    acceptance: Acceptance | None = Field(
        default=None, description="The request's examples and tests, run first in a sandbox of their own."
    )

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without ``acceptance`` when there is none, so that workers from before it still decode the input."""
        return _without_none(handler(self), "acceptance")


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
    acceptance: AcceptanceReport | None = Field(
        default=None, description="The request's acceptance checks, when it carried any."
    )

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without ``acceptance`` when there is none, so that workflows from before it still decode the report."""
        return _without_none(handler(self), "acceptance")


# --- QSecure: security scanning -----------------------------------------------------------------------------------


ScanName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
"""A project or environment name, which becomes part of the path of its release's findings."""


class ScanInput(_Model):
    run_id: str
    project: ScanName | None = Field(
        default=None, description="With environment: the findings are compared with the last release of both."
    )
    environment: ScanName | None = None

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without project and environment when there are none, so that workers from before them still decode it."""
        return _without_none(_without_none(handler(self), "project"), "environment")


Severity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
SEVERITIES: tuple[Severity, ...] = ("CRITICAL", "HIGH", "MEDIUM", "LOW")
"""Worst first."""


class Finding(_Model):
    tool: str
    rule_id: str
    severity: Severity
    confidence: Literal["LOW", "MEDIUM", "HIGH"]
    file: str = Field(description="Relative to the run's code (src/).")
    line: int
    message: str
    fingerprint: str = Field(
        default="",
        description="sha256 of tool, rule, file and the offending line's text (spaces normalised), not its number: "
        "a finding keeps it when the code moves. Empty in reports from before fingerprints.",
    )
    baseline_state: Literal["new", "unchanged", "absent"] | None = Field(
        default=None,
        description="Against the last deployed release of the project and environment: new, unchanged, or absent "
        "(fixed since). None when nothing was compared.",
    )

    @property
    def critical(self) -> bool:
        return self.severity == "CRITICAL"


class ScanReport(_Model):
    tools: list[str]
    scanned_files: int
    findings: list[Finding]
    criticals: int
    highs: int = 0
    mediums: int = 0
    lows: int = 0
    manifests: int = Field(default=0, description="Infrastructure manifests scanned (checkov).")
    baseline_release: str | None = Field(
        default=None, description="The release compared against (the last deployed one), or None when none was."
    )
    baseline_run: str | None = None
    new_findings: int | None = Field(default=None, description="Findings the compared release did not have.")
    fixed_findings: int | None = Field(default=None, description="Findings of the compared release now gone.")
    unchanged_findings: int | None = None
    fixed: list[Finding] = Field(default_factory=list, description="The first fixed findings, baseline_state absent.")
    sarif: str | None = Field(default=None, description="Path of the SARIF 2.1.0 report kept with the run.")

    @model_validator(mode="before")
    @classmethod
    def _counted(cls, data: Any) -> Any:
        """Reports from before the counts by severity count the findings they kept."""
        if isinstance(data, dict) and "highs" not in data and isinstance(data.get("findings"), list):
            severities = [
                f.get("severity") if isinstance(f, dict) else getattr(f, "severity", None) for f in data["findings"]
            ]
            data = {
                **data,
                "highs": severities.count("HIGH"),
                "mediums": severities.count("MEDIUM"),
                "lows": severities.count("LOW"),
            }
        return data

    def count(self, severity: str) -> int:
        """Findings of ``severity`` (CRITICAL, HIGH, MEDIUM or LOW)."""
        return {"CRITICAL": self.criticals, "HIGH": self.highs, "MEDIUM": self.mediums, "LOW": self.lows}[severity]

    def at_or_above(self, severity: str) -> int:
        """Findings of ``severity`` or worse; 0 for ``NEVER``."""
        if severity not in SEVERITIES:
            return 0
        return sum(self.count(s) for s in SEVERITIES[: SEVERITIES.index(severity) + 1])


class RecordReleaseInput(_Model):
    """A release that was deployed and verified: its scan's findings become the baseline of its project and
    environment."""

    run_id: str
    project: ScanName
    environment: ScanName
    release: str


class RecordedRelease(_Model):
    path: str
    findings: int


# --- QInfra: infrastructure ---------------------------------------------------------------------------------------


ResourceName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
"""A project or resource name, which becomes part of a path and a stream name."""

ResourceKind = Literal["directory", "stream", "kv", "sqlite", "port"]
MAX_DEPENDENCIES = 20


class ResourceSpec(_Model):
    """One declared resource. ``depends_on`` names resources of the same request that must exist first;
    ``from_project`` makes it a reference to a resource another project declares (provisioned by that project's
    run, never created or destroyed by this one)."""

    kind: ResourceKind
    name: ResourceName
    subjects: list[str] = Field(default_factory=list)
    max_bytes: int = 64 * 1024 * 1024
    max_age_seconds: int = 0
    history: int = Field(default=1, ge=1, le=64, description="KV buckets: values kept per key.")
    storage: Literal["file", "memory"] = Field(default="file", description="Streams and KV buckets.")
    depends_on: list[ResourceName] = Field(default_factory=list, max_length=MAX_DEPENDENCIES)
    from_project: ResourceName | None = None

    _ADDED_LATER: ClassVar[tuple[str, ...]] = ("history", "storage", "depends_on", "from_project")

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without the fields added later when they hold their defaults, so workers from before them decode it."""
        data: dict[str, Any] = handler(self)
        for name in self._ADDED_LATER:
            if getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True):
                data.pop(name, None)
        return data


class PlanInfraInput(_Model):
    run_id: str
    project: ResourceName
    environment: str
    resources: list[ResourceSpec]


class PlannedChange(_Model):
    action: Literal["create", "update", "replace", "delete", "noop"]
    kind: str
    name: str
    address: str = Field(description="Directory or file path, JetStream stream or KV bucket, loopback port.")
    detail: str = ""


class InfraPlan(_Model):
    run_id: str
    project: str
    environment: str
    changes: list[PlannedChange] = Field(description="In the order provisioning applies them.")
    resources: list[ResourceSpec] = Field(default_factory=list, description="The specs the plan was made from.")
    impact: Impact
    reasons: list[str] = Field(default_factory=list)
    references: list[str] = Field(
        default_factory=list, description="Resources of other projects this one uses: `project/name address`."
    )
    state_serial: int | None = Field(
        default=None, description="The serial of the state the plan was made from; provisioning refuses a newer one."
    )


class ProvisionedResource(_Model):
    kind: str
    name: str
    address: str
    action: str = Field(default="create", description="What provisioning did: create, update, replace, delete, noop.")


class ProvisionResult(_Model):
    resources: list[ProvisionedResource]


class DestroyResult(_Model):
    removed: list[str] = Field(default_factory=list)
    restored: list[str] = Field(default_factory=list, description="Resources put back as they were before the run.")
    notes: list[str] = Field(default_factory=list, description="What could not be put back, and why.")


class DeclaredInput(_Model):
    """Names a project's state: what it last declared in ``environment``."""

    project: ResourceName
    environment: str


class Declared(_Model):
    resources: list[ResourceSpec] = Field(default_factory=list)


# --- deployment -----------------------------------------------------------------------------------------------------


class DeployInput(_Model):
    run_id: str
    project: str
    environment: str
    release: str = Field(description="Fingerprint digest of the code being released.")
    module: str | None = Field(default=None, description="The module built; None: the one module under src/.")

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without ``module`` when there is none, so that workers from before it still decode the input."""
        return _without_none(handler(self), "module")


class Deployment(_Model):
    run_id: str
    url: str
    pid: int
    port: int
    release: str
    kind: Literal["service", "library"] | None = Field(
        default=None, description="A service runs its own code in the sandbox; a library is released as a wheel."
    )
    module: str | None = None
    artifact: str | None = Field(default=None, description="The wheel of a library release.")

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without the fields added later when unset, so that workers from before them still decode it."""
        data: dict[str, Any] = handler(self)
        for key in ("kind", "module", "artifact"):
            _without_none(data, key)
        return data


class VerifyInput(Deployment):
    """A deployment to verify, with the request's acceptance checks (a plain :class:`Deployment` still decodes)."""

    acceptance: Acceptance | None = Field(
        default=None, description="HTTP examples run against the live release; the others against its artifact."
    )

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("kind", "module", "artifact", "acceptance"):
            _without_none(data, key)
        return data


class VerifyResult(_Model):
    healthy: bool
    status_code: int | None = None
    release_matches: bool = False
    detail: str = ""
    checked: int = Field(default=0, description="Acceptance examples and tests run against the release.")
    failures: list[str] = Field(default_factory=list, max_length=MAX_ACCEPTANCE_FAILURES)


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
    files: list[str] = Field(description="This deployment's files (target, rules, dashboard): what teardown removes.")
    scrape_ok: bool
    rules_checked: bool = Field(default=False, description="Whether ``promtool check rules`` passed the rule file.")
    dashboard_uid: str = ""
    panels: list[str] = Field(default_factory=list, description="What the dashboard shows, as the scrape found it.")
    provisioning: list[str] = Field(
        default_factory=list, description="The shared Prometheus and Grafana files that read the per-deployment ones."
    )
    warnings: list[str] = Field(default_factory=list, description="What the run shows, e.g. rules left unchecked.")
