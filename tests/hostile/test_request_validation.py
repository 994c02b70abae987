"""A request or a review either validates with every bounded field inside its documented bound, or is refused with
a ``ValidationError`` that names the field: names that would reach a path, a shell, a Kubernetes manifest or a
YAML file, and source paths that would leave the workspace, are always refused."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from events.models import (
    MAX_ATTEMPTS,
    MAX_COMMENT_CHARS,
    MAX_EXPIRY_CHARS,
    MAX_GATE_CHARS,
    MAX_NAME_CHARS,
    MAX_PATH_PART_CHARS,
    MAX_RESOURCES,
    MAX_REVIEWERS,
    MAX_SOURCE_FILES,
    MAX_SOURCE_PATH_CHARS,
    MAX_SUBJECTS,
    MAX_TOKENS,
    RESERVED_SUBJECT_PREFIXES,
    CodeRequest,
    InfraRequest,
    PipelineRequest,
    ReviewInput,
    normalise_identity,
)

from .strategies import HOSTILE_FRAGMENTS, hostile_text, names, printable, source_paths

NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
PATH_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
PROMPT_MAX = 8000
UNSAFE_NAMES = [
    "",
    "a;rm -rf /",
    "a$(id)",
    "a`id`",
    "a${HOME}",
    "a\nkind: Secret",
    "a\r\nb",
    "key: value",
    "{{ .Values.x }}",
    "-rf",
    "--help",
    "a b",
    "../etc",
    "a/b",
    "a\\b",
    "/abs",
    ".hidden",
    "App",
    "a" * 41,
    "a\x00",
    "é",
    "a\u202eb",
    "ａｐｐ",
    "a|b",
    "a&b",
    "a>b",
    "a*",
    "a#b",
    "'a'",
    '"a"',
    "1app",
    "_app",
    "app\n",
]
UNSAFE_SOURCE_PATHS = [
    "../x.py",
    "a/../../x.py",
    "/etc/x.py",
    "//x.py",
    "a\\..\\x.py",
    "a\\x.py",
    "a\x00.py",
    "a\n.py",
    "./x.py",
    "a/./x.py",
    ".x.py",
    "-x.py",
    "a//x.py",
    "a/",
    "x.py/",
    "~/x.py",
    "__pycache__/x.py",
    "x" * 300 + ".py",
    "/".join(["d"] * 120) + ".py",
    "x" * (MAX_PATH_PART_CHARS + 1) + ".py",
    "x.pyc",
    "x",
    "x.py\x00.txt",
    "x y.py",
    "$(id).py",
    "`id`.py",
    "é.py",
    "\u202ex.py",
]
BASE = {"project": "app", "prompt": "a slugify helper", "requested_by": "ann"}
REVIEW = {"gate": "deploy", "reviewer": "bob", "approved": True}
REQUESTS: list[type[BaseModel]] = [PipelineRequest, CodeRequest]


def is_name(value: Any) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def is_plain_source_path(path: str) -> bool:
    parts = path.split("/")
    return (
        0 < len(path) <= MAX_SOURCE_PATH_CHARS
        and path.endswith(".py")
        and all(PATH_PART.fullmatch(part) and len(part) <= MAX_PATH_PART_CHARS for part in parts)
        and "__pycache__" not in parts
    )


def outcome(model: type[BaseModel], fields: dict[str, Any], field: str) -> BaseModel | None:
    """The validated model, or None when it is refused naming ``field``; fails on any other exception."""
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        assert field in str(err), f"{field!r} not named in: {err}"
        return None


# --- names -----------------------------------------------------------------------------------------------------------


name_candidates = st.one_of(hostile_text, names, st.text(max_size=50), st.sampled_from(UNSAFE_NAMES))


@given(model=st.sampled_from([*REQUESTS, InfraRequest]), project=name_candidates)
def test_a_project_name_is_a_plain_name_or_refused(model: type[BaseModel], project: str) -> None:
    fields: dict[str, Any] = {**BASE, "project": project}
    if model is InfraRequest:
        fields = {"project": project, "requested_by": "ann", "resources": [{"kind": "directory", "name": "data"}]}
    validated = outcome(model, fields, "project")
    assert (validated is not None) == is_name(project), repr(project)


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_names_a_shell_a_manifest_or_a_yaml_file_would_read_are_refused(name: str) -> None:
    for model in REQUESTS:
        assert outcome(model, {**BASE, "project": name}, "project") is None
    resource = {"kind": "directory", "name": name}
    infra = {"project": name, "requested_by": "ann", "resources": [{"kind": "directory", "name": "data"}]}
    assert outcome(InfraRequest, infra, "project") is None
    assert outcome(PipelineRequest, {**BASE, "infrastructure": [resource]}, "infrastructure.0.name") is None
    reference = {"kind": "directory", "name": "data", "from_project": name}
    assert outcome(PipelineRequest, {**BASE, "infrastructure": [reference]}, "from_project") is None
    dependant = {"kind": "directory", "name": "data", "depends_on": [name]}
    assert outcome(PipelineRequest, {**BASE, "infrastructure": [dependant]}, "depends_on") is None


@given(
    name=name_candidates,
    role=st.sampled_from(["name", "depends_on", "from_project"]),
    kind=st.sampled_from(["directory", "stream", "kv", "sqlite", "port"]),
)
def test_a_resource_name_is_a_plain_name_or_refused(name: str, role: str, kind: str) -> None:
    resource: dict[str, Any] = {"kind": kind, "name": "data"}
    resource[role] = [name] if role == "depends_on" else name
    validated = outcome(InfraRequest, {"project": "app", "requested_by": "ann", "resources": [resource]}, role)
    assert (validated is not None) == is_name(name), repr(name)
    if isinstance(validated, InfraRequest):
        spec = validated.resources[0]
        assert all(is_name(value) for value in (spec.name, *spec.depends_on, spec.from_project or "ok"))


# --- source paths ----------------------------------------------------------------------------------------------------


traversal_paths = st.one_of(
    st.sampled_from(UNSAFE_SOURCE_PATHS),
    st.lists(st.sampled_from(HOSTILE_FRAGMENTS), min_size=1, max_size=8).map(lambda parts: "".join(parts) + ".py"),
    st.builds(lambda a, b: f"{a}/{b}", source_paths, st.sampled_from(UNSAFE_SOURCE_PATHS)),
    st.integers(MAX_SOURCE_PATH_CHARS - 5, 4 * MAX_SOURCE_PATH_CHARS).map(lambda n: "d/" * (n // 2) + "x.py"),
)


@given(model=st.sampled_from(REQUESTS), path=st.one_of(traversal_paths, source_paths, st.text(max_size=60)))
def test_a_source_path_is_plain_and_relative_or_refused(model: type[BaseModel], path: str) -> None:
    validated = outcome(model, {**BASE, "source": {path: "x = 1\n"}}, "source")
    assert (validated is not None) == is_plain_source_path(path), repr(path)


@pytest.mark.parametrize("path", UNSAFE_SOURCE_PATHS)
def test_paths_that_leave_or_confuse_the_workspace_are_refused(path: str) -> None:
    for model in REQUESTS:
        assert outcome(model, {**BASE, "source": {"ok.py": "", path: "x = 1\n"}}, "source") is None


# --- bounds ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounded:
    """One bounded field: how to build a model holding a value, and what a validated value must satisfy."""

    field: str
    build: Callable[[Any], tuple[type[BaseModel], dict[str, Any]]]
    values: st.SearchStrategy[Any]
    holds: Callable[[Any], bool]
    named: str = ""
    """What a refusal names, when not the field itself (a rule on the whole resource names the subject)."""

    def __repr__(self) -> str:
        return self.field


def sized(text: st.SearchStrategy[str], limit: int) -> st.SearchStrategy[str]:
    """Strings around ``limit`` characters long, and short ones of the given alphabet."""
    around = st.builds(lambda n, ch: ch * n, st.integers(max(0, limit - 3), limit + 3), st.sampled_from("aé Z9"))
    return st.one_of(text, around)


def request(field: str) -> Callable[[Any], tuple[type[BaseModel], dict[str, Any]]]:
    return lambda value: (PipelineRequest, {**BASE, field: value})


def review(field: str) -> Callable[[Any], tuple[type[BaseModel], dict[str, Any]]]:
    return lambda value: (ReviewInput, {**REVIEW, field: value})


def resources(value: Any) -> tuple[type[BaseModel], dict[str, Any]]:
    return InfraRequest, {"project": "app", "requested_by": "ann", "resources": value}


def person_ok(value: str) -> bool:
    return 1 <= len(value) <= MAX_NAME_CHARS and not has_control(value) and value == value.strip()


any_text = st.text(max_size=40)
resource_items = st.builds(
    lambda index, name: {"kind": "directory", "name": f"{name}{index}"}, st.integers(0, 999), names
)
subject_values = st.one_of(
    st.from_regex(r"[a-z]{1,8}(\.[a-z>*]{1,8}){0,2}", fullmatch=True),
    st.sampled_from([">", "*", "quantum.events.x", "$JS.API.x", "_INBOX.x", "*.x", ">.x", "a b", "a\nb", ""]),
    hostile_text,
)

BOUNDED = [
    Bounded(
        "prompt",
        request("prompt"),
        sized(st.text(printable, max_size=20), PROMPT_MAX),
        lambda m: 3 <= len(m.prompt) <= PROMPT_MAX and m.prompt == m.prompt.strip(),
    ),
    Bounded(
        "requested_by",
        request("requested_by"),
        sized(any_text, MAX_NAME_CHARS),
        lambda m: person_ok(m.requested_by),
    ),
    Bounded(
        "max_attempts",
        request("max_attempts"),
        st.integers(-3, MAX_ATTEMPTS + 3),
        lambda m: 1 <= m.max_attempts <= MAX_ATTEMPTS,
    ),
    Bounded(
        "max_tokens",
        request("max_tokens"),
        st.integers(-3, MAX_TOKENS + 3),
        lambda m: 0 < m.max_tokens <= MAX_TOKENS,
    ),
    Bounded(
        "source",
        request("source"),
        st.integers(MAX_SOURCE_FILES - 2, MAX_SOURCE_FILES + 2).map(lambda n: {f"m{i}.py": "" for i in range(n)}),
        lambda m: len(m.source) <= MAX_SOURCE_FILES,
    ),
    Bounded(
        "infrastructure",
        request("infrastructure"),
        st.lists(resource_items, min_size=MAX_RESOURCES - 2, max_size=MAX_RESOURCES + 2, unique_by=lambda r: r["name"]),
        lambda m: len(m.infrastructure) <= MAX_RESOURCES,
    ),
    Bounded(
        "resources",
        resources,
        st.lists(resource_items, max_size=MAX_RESOURCES + 2, unique_by=lambda r: r["name"]),
        lambda m: 1 <= len(m.resources) <= MAX_RESOURCES,
    ),
    Bounded(
        "subjects",
        lambda value: resources([{"kind": "stream", "name": "events", "subjects": value}]),
        st.lists(subject_values, max_size=MAX_SUBJECTS + 2, unique=True),
        lambda m: (
            len(subjects := m.resources[0].subjects) <= MAX_SUBJECTS
            and all(
                s not in {">", "*"}
                and not s.startswith(RESERVED_SUBJECT_PREFIXES)
                and re.fullmatch(r"[A-Za-z0-9_.*>-]{1,200}", s)
                for s in subjects
            )
        ),
        named="subject",
    ),
    Bounded(
        "reviewers",
        lambda value: (PipelineRequest, {**BASE, "approval_policy": {"reviewers": value}}),
        st.one_of(
            st.lists(st.one_of(any_text, sized(any_text, MAX_NAME_CHARS)), max_size=5),
            st.integers(MAX_REVIEWERS - 2, MAX_REVIEWERS + 2).map(lambda n: [f"r{i}" for i in range(n)]),
        ),
        lambda m: (
            len(listed := m.approval_policy.reviewers) <= MAX_REVIEWERS and all(person_ok(name) for name in listed)
        ),
    ),
    Bounded("gate", review("gate"), sized(any_text, MAX_GATE_CHARS), lambda m: 1 <= len(m.gate) <= MAX_GATE_CHARS),
    Bounded("reviewer", review("reviewer"), sized(any_text, MAX_NAME_CHARS), lambda m: person_ok(m.reviewer)),
    Bounded(
        "comment",
        review("comment"),
        sized(any_text, MAX_COMMENT_CHARS),
        lambda m: len(m.comment) <= MAX_COMMENT_CHARS,
    ),
    Bounded(
        "digest",
        review("digest"),
        st.one_of(st.from_regex(r"[0-9a-fA-F]{60,68}", fullmatch=True), sized(any_text, 64), hostile_text),
        lambda m: re.fullmatch(r"[0-9a-f]{64}", m.digest) is not None,
    ),
    Bounded(
        "signature",
        review("signature"),
        st.one_of(st.from_regex(r"[A-Za-z0-9+/=]{195,205}", fullmatch=True), any_text, hostile_text),
        lambda m: re.fullmatch(r"[A-Za-z0-9+/=]{1,200}", m.signature) is not None,
    ),
    Bounded(
        "nonce",
        review("nonce"),
        st.one_of(st.from_regex(r"[A-Za-z0-9_-]{0,10}|[A-Za-z0-9_-]{126,130}", fullmatch=True), hostile_text),
        lambda m: re.fullmatch(r"[A-Za-z0-9_-]{8,128}", m.nonce) is not None,
    ),
    Bounded(
        "expires_at",
        review("expires_at"),
        sized(any_text, MAX_EXPIRY_CHARS),
        lambda m: 1 <= len(m.expires_at) <= MAX_EXPIRY_CHARS,
    ),
]


@pytest.mark.parametrize("case", BOUNDED, ids=repr)
@given(data=st.data())
def test_a_bounded_field_validates_within_its_bound_or_is_refused_naming_it(case: Bounded, data: st.DataObject) -> None:
    value = data.draw(case.values, label=case.field)
    model, fields = case.build(value)
    validated = outcome(model, fields, case.named or case.field)
    if validated is not None:
        assert case.holds(validated), f"{case.field} = {value!r:.200}"


@pytest.mark.parametrize("case", BOUNDED, ids=repr)
def test_every_bound_accepts_something(case: Bounded) -> None:
    """No bound refuses everything: the smallest valid value of each field is taken."""
    smallest = {
        "prompt": "abc",
        "requested_by": "a",
        "max_attempts": 1,
        "max_tokens": 1,
        "source": {},
        "infrastructure": [],
        "resources": [{"kind": "directory", "name": "a"}],
        "subjects": [],
        "reviewers": [],
        "gate": "g",
        "reviewer": "b",
        "comment": "",
        "digest": "0" * 64,
        "signature": "A",
        "nonce": "abcdefgh",
        "expires_at": "x",
    }[case.field]
    model, fields = case.build(smallest)
    assert case.holds(model.model_validate(fields))


@given(
    reviewer=st.one_of(st.text(max_size=MAX_NAME_CHARS + 5), hostile_text),
    gate=st.text(max_size=MAX_GATE_CHARS + 5),
    comment=sized(any_text, MAX_COMMENT_CHARS),
)
def test_a_review_the_edge_accepts_is_one_the_run_can_judge(reviewer: str, gate: str, comment: str) -> None:
    """Whatever ``ReviewInput`` takes, the workflow's own size and shape checks take too, and it names someone."""
    try:
        validated = ReviewInput.model_validate({**REVIEW, "reviewer": reviewer, "gate": gate, "comment": comment})
    except ValidationError as err:
        assert {str(e["loc"][0]) for e in err.errors()} <= {"reviewer", "gate", "comment"}
        return
    decision = validated.decision()
    assert decision.problem() is None
    assert normalise_identity(decision.reviewer)


@given(
    subject=st.one_of(
        st.sampled_from(["a..b", "a.>.b", ".a"]),
        st.builds(lambda a, b: f"{a}..{b}", names, names),
        st.builds(lambda a, b: f"{a}.>.{b}", names, names),
    )
)
@example(subject="a..b")
def test_a_stream_subject_nats_would_refuse_is_refused_at_validation(subject: str) -> None:
    resource = {"kind": "stream", "name": "events", "subjects": [subject]}
    assert outcome(InfraRequest, {"project": "app", "requested_by": "ann", "resources": [resource]}, "subject") is None
