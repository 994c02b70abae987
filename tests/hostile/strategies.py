"""Strategies for the hostile-input properties: valid inbound events built from the models' own rules, and the
hostile text (shell, YAML and manifest syntax, traversal, odd unicode) set against them."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from events.catalog import INBOUND
from events.models import GATES, MAX_SOURCE_PATH_CHARS, RESERVED_SUBJECT_PREFIXES

NAME_PATTERN = r"[a-z][a-z0-9_-]{0,39}"
"""Project and resource names, as documented: what may reach a path, a stream name, a manifest."""

names = st.from_regex(NAME_PATTERN, fullmatch=True)
printable = st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Zs"))
"""Any character a person might type: no control characters, no surrogates."""
people = st.text(printable, min_size=1, max_size=40).filter(lambda text: bool(text.strip()))
prompts = st.text(printable, min_size=3, max_size=300).filter(lambda text: len(text.strip()) >= 3)
event_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,60}", fullmatch=True)
path_parts = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}", fullmatch=True).filter(
    lambda part: part != "__pycache__"
)
source_paths = st.builds(
    lambda parts, stem: "/".join([*parts, f"{stem}.py"]),
    st.lists(path_parts, max_size=3),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,20}", fullmatch=True),
).filter(lambda path: len(path) <= MAX_SOURCE_PATH_CHARS)
contents = st.text(st.characters(codec="utf-8"), max_size=200)
digests = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)

HOSTILE_FRAGMENTS = (
    "../",
    "..",
    "/",
    "\\",
    "\x00",
    "\n",
    "\r",
    ";",
    "$(id)",
    "`id`",
    "${HOME}",
    ": ",
    "{{",
    "}}",
    "-",
    "--",
    "|",
    "&",
    ">",
    "*",
    "#",
    "'",
    '"',
    " ",
    "\t",
    "\u202e",
    "\u200b",
    "\ufeff",
    "é",
    "Ａ",
    "A",
    "~",
    "%2e%2e%2f",
)
hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE_FRAGMENTS), st.text(printable, max_size=8), names),
    max_size=12,
).map("".join)
"""Text made of the fragments a shell, a YAML file, a Kubernetes manifest or a file system reads specially."""


stream_subjects = st.lists(
    st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z0-9]{1,8}){0,2}(\.>)?", fullmatch=True).filter(
        lambda value: not value.startswith(RESERVED_SUBJECT_PREFIXES)
    ),
    max_size=3,
    unique=True,
)


@st.composite
def resources(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["directory", "stream", "kv", "sqlite", "port"]))
    resource: dict[str, Any] = {"kind": kind, "name": draw(names)}
    if kind == "stream":
        resource["subjects"] = draw(stream_subjects)
    if kind == "kv":
        resource["history"] = draw(st.integers(1, 64))
    if kind in ("stream", "kv"):
        resource["storage"] = draw(st.sampled_from(["file", "memory"]))
        resource["max_bytes"] = draw(st.integers(1, 1024**3))
    if draw(st.booleans()):
        resource["from_project"] = draw(names)
    else:
        resource["depends_on"] = draw(st.lists(names, max_size=3, unique=True))
    return resource


resource_lists = st.lists(resources(), min_size=1, max_size=5, unique_by=lambda r: (r["kind"], r["name"]))


@st.composite
def approval_policies(draw: st.DrawFn) -> dict[str, Any]:
    reviewers = draw(st.lists(st.from_regex(r"[a-z]{3,10}", fullmatch=True), max_size=4, unique=True))
    groups = draw(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True), max_size=2, unique=True))
    most = len(reviewers) if reviewers and not groups else 10
    policy: dict[str, Any] = {"reviewers": reviewers, "groups": groups}
    policy["required_approvals"] = draw(st.dictionaries(st.sampled_from(GATES), st.integers(1, most), max_size=3))
    policy["timeout_seconds"] = draw(st.dictionaries(st.sampled_from(GATES), st.floats(1, 86400), max_size=3))
    policy["requester_may_review"] = draw(st.sampled_from([None, True, False]))
    return policy


def _build(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {"project": draw(names), "prompt": draw(prompts), "requested_by": draw(people)}
    if draw(st.booleans()):
        data["source"] = draw(st.dictionaries(source_paths, contents, max_size=3))
    if draw(st.booleans()):
        data["test_policy"] = {
            "min_coverage": draw(st.floats(0, 100)),
            "mutants": draw(st.integers(0, 20)),
            "min_mutation_score": draw(st.floats(0, 1)),
        }
    if draw(st.booleans()):
        data["max_attempts"] = draw(st.integers(1, 10))
    if draw(st.booleans()):
        data["max_tokens"] = draw(st.integers(1, 10_000_000))
    if draw(st.booleans()):
        data["acceptance"] = {
            "examples": [{"call": "slugify", "args": draw(st.lists(st.text(printable, max_size=10), max_size=3))}]
        }
        data["acceptance"]["examples"][0]["expect"] = draw(st.text(printable, max_size=10))
    return data


@st.composite
def pipeline_data(draw: st.DrawFn) -> dict[str, Any]:
    data = _build(draw)
    data["environment"] = draw(st.sampled_from(["dev", "staging", "prod"]))
    if draw(st.booleans()):
        data["infrastructure"] = draw(resource_lists)
    data["approval_policy"] = draw(approval_policies())
    data["security_policy"] = {"gate_at": draw(st.sampled_from(["critical", "high", "medium", "low", "never"]))}
    return data


@st.composite
def code_data(draw: st.DrawFn) -> dict[str, Any]:
    data = _build(draw)
    data["tested"] = draw(st.booleans())
    return data


@st.composite
def infra_data(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "project": draw(names),
        "requested_by": draw(people),
        "environment": draw(st.sampled_from(["dev", "staging", "prod"])),
        "resources": draw(resource_lists),
        "approval_policy": draw(approval_policies()),
    }


@st.composite
def review_data(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {
        "gate": draw(st.one_of(st.sampled_from(GATES), st.text(printable, min_size=1, max_size=32))),
        "reviewer": draw(people),
        "approved": draw(st.booleans()),
        "comment": draw(st.text(printable, max_size=200)),
        "pipeline_id": draw(st.text(printable, min_size=1, max_size=80)),
    }
    if draw(st.booleans()):
        data["digest"] = draw(digests)
    if draw(st.booleans()):
        data["signature"] = draw(st.from_regex(r"[A-Za-z0-9+/=]{1,200}", fullmatch=True))
        data["nonce"] = draw(st.from_regex(r"[A-Za-z0-9_-]{8,128}", fullmatch=True))
        data["expires_at"] = draw(st.text(printable, min_size=1, max_size=64))
    return data


@st.composite
def cancel_data(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "pipeline_id": draw(st.text(printable, min_size=1, max_size=80)),
        "requested_by": draw(people),
        "reason": draw(st.text(printable, max_size=200)),
    }


DATA: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "quantum.pipeline.requested": pipeline_data(),
    "quantum.code.requested": code_data(),
    "quantum.infra.requested": infra_data(),
    "quantum.review.submitted": review_data(),
    "quantum.pipeline.cancel_requested": cancel_data(),
}
assert set(DATA) == set(INBOUND), "every inbound event type has a strategy"


@st.composite
def inbound_events(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid inbound event as a JSON object: its type and its body."""
    event_type = draw(st.sampled_from(sorted(DATA)))
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(event_ids),
        "source": draw(st.text(printable, min_size=1, max_size=40)),
        "type": event_type,
        "datacontenttype": "application/json",
        "data": draw(DATA[event_type]),
    }
    if draw(st.booleans()):
        body["time"] = "2025-01-02T03:04:05Z"
    return event_type, body


def encoded(body: Any) -> bytes:
    """``body`` as the bytes a publisher sends: JSON, non-ASCII as JSON escapes."""
    return json.dumps(body).encode()
