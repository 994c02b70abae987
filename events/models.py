"""Requests and decisions that cross the bus, and that the workflows take as input and signal payloads.

Every model here is plain JSON through the pydantic data converter, so the stock ``temporal`` CLI and any NATS
client can produce them.
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
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
EDGE: Literal["forbid"] = "forbid"
"""How the edges refuse fields nobody knows in what people and clients send, at every level (see :func:`at_edge`)."""
REVIEW_REFUSED = "ReviewRefused"
"""The failure type of a ``review`` Update the run's rules refuse: the CLI and the bridge read it."""
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS = 10
MAX_TOKENS = 10_000_000
MAX_SUBJECTS = 10
MAX_REVIEWERS = 50
MAX_NAME_CHARS = 100
MAX_COMMENT_CHARS = 2000
MAX_GATE_CHARS = 32
MAX_DIGEST_CHARS = 128
MAX_SIGNATURE_CHARS = 200
MAX_NONCE_CHARS = 128
MAX_EXPIRY_CHARS = 64
MAX_CHALLENGE_CHARS = 64
MAX_GATE_TIMEOUT_SECONDS = 30 * 24 * 60 * 60
MAX_STREAM_BYTES = 1024**4
RESERVED_SUBJECT_PREFIXES = ("quantum.", "$", "_INBOX.", "*.", ">.")
MAX_EXAMPLES = 100
MAX_EXAMPLE_ARGS = 50
MAX_EXPR_CHARS = 2000
MAX_DOTTED_CHARS = 200
MAX_HTTP_PATH_CHARS = 2000
MAX_JSON_DEPTH = 20
MAX_ACCEPTANCE_TESTS_BYTES = 64 * 1024
MAX_ACCEPTANCE_BYTES = 256 * 1024
"""Bounds on every field a request or a review carries into a run's state (and so into its history and queries)."""

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
"""A project or resource name: lower-case letters, digits, ``-`` and ``_``, starting with a letter."""
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Controls, format characters (zero-width spaces and joiners, bidi marks, soft hyphens, BOM), surrogates, private
use, unassigned code points, line and paragraph separators: what makes two names look the same and differ."""


def invisible_characters(text: str) -> list[str]:
    """The invisible or control characters of ``text``, as ``U+XXXX``."""
    return [f"U+{ord(ch):04X}" for ch in text if unicodedata.category(ch) in _INVISIBLE_CATEGORIES]


def _visible(name: str) -> str:
    hidden = invisible_characters(name)
    if hidden:
        raise ValueError(f"contains invisible or control characters ({', '.join(sorted(set(hidden))[:5])})")
    return name


Person = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_CHARS),
    AfterValidator(_visible),
]
"""A person's name: 1 to 100 characters, nothing invisible (no control, format or zero-width characters)."""
Comment = Annotated[str, StringConstraints(max_length=MAX_COMMENT_CHARS)]

_SPACES = re.compile(r"\s+")


def _has_control_character(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def visible_form(name: str) -> str:
    """``name`` in Unicode NFKC with every invisible or control character removed (case kept)."""
    text = unicodedata.normalize("NFKC", name)
    return "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES)


def normalise_identity(name: str) -> str:
    """The form in which names are compared: Unicode NFKC, invisible characters removed, case-folded, inner spaces
    collapsed, trimmed.

    ``Ann``, ``ann`` and `` ANN `` are one person; so are ``ｅｒｉｎ`` (full-width), ``erin`` and ``er\u200bin`` (a
    zero-width space inside). Names carrying invisible characters are refused at the edges anyway (:data:`Person`).
    """
    return _SPACES.sub(" ", visible_form(name).casefold()).strip()


ModelT = TypeVar("ModelT", bound=BaseModel)


def at_edge(model: type[ModelT], data: Any) -> ModelT:
    """``data`` (parsed JSON or YAML from a person or a client) as ``model``, validated as the edges validate: no
    field nobody knows, and JSON types as the published schema says them (``"yes"`` is not a boolean, ``true`` not
    a number), which pydantic's lax mode would otherwise coerce."""
    return model.model_validate_json(json.dumps(data, default=str), strict=True, extra=EDGE)


class _Strict(BaseModel):
    """A payload model: immutable, and tolerant of fields it does not know, so that a worker of an earlier version
    reads what a later one wrote during a rolling upgrade. The edges (the bridge, request files) validate with
    ``extra="forbid"`` (:data:`EDGE`): a misspelt field from a person or a client is refused there, by name."""

    model_config = ConfigDict(extra="ignore", frozen=True)


GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
"""A reviewer group's name, as the deployment's ``QUANTUM_REVIEWER_GROUPS`` defines it."""
Approvals = Annotated[int, Field(ge=1, le=10)]
GateTimeout = Annotated[float, Field(gt=0, le=MAX_GATE_TIMEOUT_SECONDS)]


class GateRule(_Strict):
    """One gate's rule; a field left unset (None) is taken from the run-wide policy, then from the deployment's
    defaults (``QUANTUM_REVIEW_DEFAULTS``)."""

    reviewers: list[Person] | None = Field(default=None, max_length=MAX_REVIEWERS)
    groups: list[GroupName] | None = Field(default=None, max_length=MAX_REVIEWERS)
    required_approvals: Approvals | None = None
    timeout_seconds: GateTimeout | None = None
    requester_may_review: bool | None = Field(
        default=None, description="Whether the person who requested the run may review this gate (default: never)."
    )


class ApprovalPolicy(_Strict):
    """Who may review a run's gates, how many approvals each gate needs and how long it waits."""

    reviewers: list[Person] = Field(
        default_factory=list,
        max_length=MAX_REVIEWERS,
        description="Names allowed to review; with no names and no groups, anyone but the requester.",
    )
    required_approvals: dict[Gate, Approvals] = Field(default_factory=dict)
    timeout_seconds: dict[Gate, GateTimeout] = Field(default_factory=dict)
    escalation_contacts: list[Person] = Field(
        default_factory=list,
        max_length=MAX_REVIEWERS,
        description="Told (quantum.review.escalated) when a gate has waited 80 % of its timeout.",
    )
    groups: list[GroupName] = Field(
        default_factory=list,
        max_length=MAX_REVIEWERS,
        description="Reviewer groups (QUANTUM_REVIEWER_GROUPS) whose members may review, besides ``reviewers``.",
    )
    requester_may_review: bool | None = Field(
        default=None, description="Whether the requester may review the run's gates (default: never)."
    )
    gates: dict[Gate, GateRule] = Field(default_factory=dict, description="Rules of single gates.")

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without the fields added later when they hold their defaults, so that workers from before them still
        decode the policy."""
        data: dict[str, Any] = handler(self)
        for name in ("escalation_contacts", "groups", "gates"):
            if not getattr(self, name):
                data.pop(name, None)
        if self.requester_may_review is None:
            data.pop("requester_may_review", None)
        return data

    def approvals_for(self, gate: str) -> int:
        """The quorum the request asks of ``gate`` (the deployment's defaults may ask more, see
        :func:`workflows.reviews.gate_policy`)."""
        rule = self.gates.get(gate)  # type: ignore[call-overload]
        if rule is not None and rule.required_approvals is not None:
            return int(rule.required_approvals)
        return int(self.required_approvals.get(gate, 1))  # type: ignore[call-overload]

    def timeout_for(self, gate: str) -> float:
        rule = self.gates.get(gate)  # type: ignore[call-overload]
        if rule is not None and rule.timeout_seconds is not None:
            return float(rule.timeout_seconds)
        return float(self.timeout_seconds.get(gate, DEFAULT_GATE_TIMEOUT_SECONDS))  # type: ignore[call-overload]

    @model_validator(mode="after")
    def _quorum_is_reachable(self) -> ApprovalPolicy:
        """A quorum larger than the names allowed can never be met (with groups, the deployment knows the count)."""
        for gate in GATES:
            rule = self.gates.get(gate)  # type: ignore[call-overload]
            names = self.reviewers if rule is None or rule.reviewers is None else rule.reviewers
            groups = self.groups if rule is None or rule.groups is None else rule.groups
            allowed = len({normalise_identity(name) for name in names})
            count = self.approvals_for(gate)
            if names and not groups and count > allowed:
                raise ValueError(f"gate {gate!r} needs {count} approvals but only {allowed} reviewers are allowed")
        return self


class TestPolicy(_Strict):
    """What the test stage demands of the generated tests."""

    __test__ = False  # not a pytest test class

    min_coverage: float = Field(default=DEFAULT_MIN_COVERAGE, ge=0, le=100, description="Line coverage, percent.")
    mutants: int = Field(default=4, ge=0, le=20, description="Broken variants of the code the tests must catch.")
    min_mutation_score: float = Field(
        default=0.5, ge=0, le=1, description="Share of the mutants the tests must catch for them to count."
    )


class SecurityPolicy(_Strict):
    """When the security scan's findings open the ``security`` gate."""

    gate_at: Literal["critical", "high", "medium", "low", "never"] = Field(
        default="critical",
        description="Findings of this severity or worse open the security gate (never: reported only).",
    )


class InfraResource(_Strict):
    """One declared resource: a directory or a SQLite database in the data dir, a JetStream stream or KV bucket on
    the bus, or a loopback port reserved for the project. ``depends_on`` names resources of the same request that
    must exist first; ``from_project`` makes it a reference to a resource that another project declares: that
    project's provisioning runs first (a child ``InfraProvisionWorkflow``), and this run never creates or removes
    it."""

    kind: Literal["directory", "stream", "kv", "sqlite", "port"]
    name: Name
    subjects: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.*>-]{1,200}$")]] = Field(
        default_factory=list, max_length=MAX_SUBJECTS
    )
    max_bytes: int = Field(default=64 * 1024 * 1024, gt=0, le=MAX_STREAM_BYTES)
    max_age_seconds: int = Field(default=0, ge=0, le=10 * 365 * 24 * 3600)
    history: int = Field(default=1, ge=1, le=64, description="KV buckets: how many values are kept per key.")
    storage: Literal["file", "memory"] = Field(default="file", description="Streams and KV buckets.")
    depends_on: list[Name] = Field(
        default_factory=list,
        max_length=MAX_RESOURCES,
        description="Names of resources of this request that are provisioned first (and removed last).",
    )
    from_project: Name | None = Field(
        default=None,
        description="A resource that this other project declares: its provisioning runs first, as a child run.",
    )

    _ADDED_LATER: ClassVar[tuple[str, ...]] = ("history", "storage", "depends_on", "from_project")

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without the fields added later when they hold their defaults, so that bridges and workers from before
        them still decode the resource."""
        data: dict[str, Any] = handler(self)
        for name in self._ADDED_LATER:
            if getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True):
                data.pop(name, None)
        return data

    @model_validator(mode="after")
    def _subjects_only_for_streams(self) -> InfraResource:
        if self.kind != "stream" and self.subjects:
            raise ValueError(f"subjects only apply to streams, not to a {self.kind}")
        if self.kind != "kv" and self.history != 1:
            raise ValueError(f"history only applies to kv buckets, not to a {self.kind}")
        if self.kind not in ("stream", "kv") and self.storage != "file":
            raise ValueError(f"storage only applies to streams and kv buckets, not to a {self.kind}")
        if self.from_project is not None and self.depends_on:
            raise ValueError("a resource of another project (from_project) cannot depend on resources of this one")
        for subject in self.subjects:
            if subject.startswith(RESERVED_SUBJECT_PREFIXES) or subject in {">", "*"}:
                raise ValueError(
                    f"subject {subject!r} is reserved (the product's own bus, JetStream's API, reply inboxes)"
                )
            problem = subject_problem(subject)
            if problem:
                raise ValueError(f"subject {subject!r} {problem}")
        return self


def subject_problem(subject: str) -> str | None:
    """Why NATS would refuse ``subject`` for a stream, or None: tokens are non-empty, ``*`` stands alone in its token
    and ``>`` only as the last token."""
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token:
            return "has an empty token (a leading, trailing or doubled '.')"
        if ("*" in token or ">" in token) and len(token) > 1:
            return f"has the token {token!r}: '*' and '>' stand alone in their token"
        if token == ">" and index != len(tokens) - 1:
            return "has '>' before its last token"
    return None


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
        try:
            total += len(content.encode("utf-8"))
        except UnicodeEncodeError as err:  # a lone surrogate: no file, no payload can hold it
            raise ValueError(
                f"source file {path!r} is not text: it holds U+{ord(content[err.start]):04X} (a lone surrogate)"
            ) from None
    if total > MAX_SOURCE_BYTES:
        raise ValueError(f"source files total {total} bytes, over the {MAX_SOURCE_BYTES} byte limit")
    return source


# --- acceptance: the request is the specification -------------------------------------------------------------------
# agents/models.py holds the same models, field for field (agents and events import nothing of each other); the
# workflow converts one into the other, and tests/agents/test_acceptance.py holds both to one schema and one behaviour.

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


class _AsWritten(_Strict):
    """Serialised with only the fields that were given: ``expect: null`` stays apart from no ``expect`` through
    every round trip (an event, a workflow input, an activity input)."""

    model_config = ConfigDict(serialize_by_alias=True)

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


class _Build(_Strict):
    """What a request for code says about building it: its source, its acceptance checks, the test policy and,
    with a model, how many attempts and tokens the build may take."""

    project: Name
    prompt: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=8000)]
    requested_by: Person
    language: Literal["python"] = "python"
    source: dict[str, str] = Field(default_factory=dict, description="Files to start from: path -> content.")
    test_policy: TestPolicy = Field(default_factory=TestPolicy)
    acceptance: Acceptance | None = Field(
        default=None,
        description="The request is the specification: examples (calls, expressions, HTTP requests with what they "
        "must give) and pytest tests that the code must pass, run in the sandbox before the generated tests.",
    )
    max_attempts: int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        le=MAX_ATTEMPTS,
        description="With a model: how many times code and tests are written, tried and repaired before the "
        "stage fails. The offline provider writes once.",
    )
    max_tokens: int | None = Field(
        default=None,
        gt=0,
        le=MAX_TOKENS,
        description="With a model: the most tokens (prompt and completion) the run may use; reaching it fails the "
        "stage with that reason.",
    )

    _source = field_validator("source")(_check_source)

    _ADDED_LATER: ClassVar[tuple[str, ...]] = ("acceptance", "max_attempts", "max_tokens")

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without the fields added later when they hold their defaults, so that bridges and workers from before
        them still decode the request."""
        data: dict[str, Any] = handler(self)
        for name in self._ADDED_LATER:
            field = type(self).model_fields[name]
            if getattr(self, name) == field.get_default(call_default_factory=True):
                data.pop(name, None)
        return data


class PipelineRequest(_Build):
    """The data of ``quantum.pipeline.requested`` and the input of ``DevSecOpsPipelineWorkflow``."""

    environment: Environment = "dev"
    infrastructure: list[InfraResource] | None = Field(default=None, max_length=MAX_RESOURCES)
    approval_policy: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    security_policy: SecurityPolicy = Field(
        default_factory=SecurityPolicy,
        description="Which findings open the security gate (default: criticals); the others are reported.",
    )

    _ADDED_LATER: ClassVar[tuple[str, ...]] = (*_Build._ADDED_LATER, "security_policy")

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


class CodeRequest(_Build):
    """The data of ``quantum.code.requested`` and the input of ``CodeGenerationWorkflow``.

    With ``tested``, the code is also tested in the sandbox against the request's acceptance checks (and, with a
    model, repaired), as in the pipeline: ``quantum eval`` builds its tasks this way.
    """

    tested: bool = Field(default=False, description="Also write and run tests (and repair, with a model).")

    _ADDED_LATER: ClassVar[tuple[str, ...]] = (
        "test_policy",
        "acceptance",
        "max_attempts",
        "max_tokens",
        "tested",
    )


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
    digest: str | None = Field(default=None, description="The sha256 of what the gate asks about, as reviewed.")
    signature: str | None = Field(default=None, description="Ed25519 over the canonical form, base64.")
    nonce: str | None = Field(default=None, description="Unique per signed review: a replay is refused.")
    expires_at: str | None = Field(default=None, description="ISO 8601 with a time zone: refused after it.")
    challenge: str | None = Field(
        default=None, description="The challenge the gate issued when it opened (its status names it), as signed."
    )

    def problem(self) -> str | None:
        """Why this review cannot be taken whoever sent it (a missing name, a field over its bound), or None."""
        if len(self.gate) > MAX_GATE_CHARS:
            return f"the gate name is {len(self.gate)} characters long, over the {MAX_GATE_CHARS} limit"
        if len(self.reviewer) > MAX_NAME_CHARS:
            return f"the reviewer name is {len(self.reviewer)} characters long, over the {MAX_NAME_CHARS} limit"
        if not normalise_identity(self.reviewer):
            return "the review names no reviewer"
        hidden = invisible_characters(self.reviewer)
        if hidden:
            return f"the reviewer name contains invisible or control characters ({', '.join(sorted(set(hidden))[:5])})"
        if len(self.comment) > MAX_COMMENT_CHARS:
            return f"the comment is {len(self.comment)} characters long, over the {MAX_COMMENT_CHARS} limit"
        for field, limit in _REVIEW_EXTRAS.items():
            value = getattr(self, field)
            if value is not None and len(value) > limit:
                return f"the {field} is {len(value)} characters long, over the {limit} limit"
        return None

    def signed_part(self) -> dict[str, Any]:
        """The optional fields that bind and authenticate the review, those given."""
        return {name: getattr(self, name) for name in _REVIEW_EXTRAS if getattr(self, name) is not None}


_REVIEW_EXTRAS = {
    "digest": MAX_DIGEST_CHARS,
    "signature": MAX_SIGNATURE_CHARS,
    "nonce": MAX_NONCE_CHARS,
    "expires_at": MAX_EXPIRY_CHARS,
    "challenge": MAX_CHALLENGE_CHARS,
}


class ReviewInput(BaseModel):
    """A review as a person or a client sends it, validated strictly before it is sent (the CLI, the bus)."""

    model_config = ConfigDict(extra="forbid")

    gate: Annotated[str, StringConstraints(min_length=1, max_length=MAX_GATE_CHARS)]
    reviewer: Person
    approved: bool
    comment: Comment = ""
    digest: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None, description="The sha256 (hex) of what the gate asks about, as the reviewer saw it."
    )
    signature: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/=]{1,200}$")] | None = Field(
        default=None, description="Ed25519 signature (base64) of the canonical form, where the deployment asks."
    )
    nonce: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,128}$")] | None = None
    expires_at: Annotated[str, StringConstraints(min_length=1, max_length=MAX_EXPIRY_CHARS)] | None = Field(
        default=None, description="ISO 8601 with a time zone; the review is refused after it."
    )
    challenge: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32,64}$")] | None = Field(
        default=None, description="The challenge the gate issued when it opened, where the run issues one."
    )

    def decision(self) -> ReviewDecision:
        return ReviewDecision(
            gate=self.gate,
            reviewer=self.reviewer,
            approved=self.approved,
            comment=self.comment,
            digest=self.digest,
            signature=self.signature,
            nonce=self.nonce,
            expires_at=self.expires_at,
            challenge=self.challenge,
        )
