"""The subject space of a project's streams and the rules on their subjects: ``qinfra.<project>`` in dev and
``qinfra.<project>.<environment>`` elsewhere, subjects that must lie in it with plain tokens, whether two subject
patterns overlap, and the refusals (``InvalidRequest``) of a request whose streams leave their scope or overlap each
other.
"""

from __future__ import annotations

import re

from agents.errors import INVALID_REQUEST, failure
from agents.models import ResourceSpec

SUBJECT_ROOT = "qinfra"
MAX_SUBJECT_CHARS = 200
_SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def subject_scope(project: str, environment: str = "dev") -> str:
    """The subject space of ``project``'s streams in ``environment``: ``qinfra.<project>`` in dev (as before
    environments counted), ``qinfra.<project>.<environment>`` elsewhere."""
    return f"{SUBJECT_ROOT}.{project}" if environment == "dev" else f"{SUBJECT_ROOT}.{project}.{environment}"


def subject_outside_scope(subject: str, scope: str) -> str | None:
    """Why ``subject`` may not be a subject of a stream in ``scope``, or None when it is ``scope`` or lies under it.

    Its tokens are plain (ASCII letters, digits, ``_``, ``-``), a ``*`` alone, or a ``>`` alone as the last; the
    tokens of ``scope`` open it literally, since a wildcard there would reach other projects' subjects.
    """
    if not subject or len(subject) > MAX_SUBJECT_CHARS:
        return f"must have 1 to {MAX_SUBJECT_CHARS} characters"
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token:
            return "has an empty token (a leading, trailing or doubled '.')"
        if token == ">" and index < len(tokens) - 1:
            return "has '>' before its last token"
        if token not in ("*", ">") and not _SUBJECT_TOKEN.fullmatch(token):
            return f"has the token {token[:40]!r}: letters, digits, '_' and '-', or '*' or a last '>' alone"
    head = scope.split(".")
    if tokens[: len(head)] != head:
        return f"lies outside the project's subjects: it must be {scope!r} or begin with {scope + '.'!r}"
    return None


def subjects_overlap(first: str, second: str) -> bool:
    """Whether some subject matches both patterns (NATS: ``*`` matches one token, a last ``>`` one or more)."""
    a, b = first.split("."), second.split(".")
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != y and "*" not in (x, y):
            return False
    return True


def _first_overlap(ours: list[str], theirs: list[str]) -> tuple[str, str] | None:
    return next(((a, b) for a in ours for b in theirs if subjects_overlap(a, b)), None)


def _refuse_outside_scope(project: str, environment: str, specs: list[ResourceSpec]) -> None:
    """Refuse a stream of ``specs`` with a subject outside the subject space of ``project`` in ``environment``."""
    scope = subject_scope(project, environment)
    for spec in specs:
        if spec.kind != "stream" or spec.from_project is not None:
            continue
        for index, subject in enumerate(spec.subjects):
            problem = subject_outside_scope(subject, scope)
            if problem:
                raise failure(INVALID_REQUEST, f"stream {spec.name}: subjects[{index}] {subject[:80]!r} {problem}")


def _refuse_overlaps_within(wanted: dict[str, tuple[str, list[str]]]) -> None:
    """Refuse two streams of one request (name: address, subjects) whose subjects overlap."""
    names = list(wanted)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            clash = _first_overlap(wanted[first][1], wanted[second][1])
            if clash is not None:
                raise failure(
                    INVALID_REQUEST,
                    f"streams {first} and {second} of this request overlap: {clash[0]!r} and {clash[1]!r}",
                )
