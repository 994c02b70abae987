"""Checks on command-line values, made before anything is sent: a bad value is a usage error (exit 2)."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from pydantic import ValidationError

_EVENT_TYPE = re.compile(r"^quantum\.([a-z_]+|\*)\.([a-z_]+|\*)$")


def has_control_characters(value: str) -> bool:
    return any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in value)


def check_run_id(value: str) -> str:
    if not value.strip():
        raise typer.BadParameter("must not be empty")
    if has_control_characters(value):
        raise typer.BadParameter("must not contain control characters")
    try:
        value.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8 on the command line
        raise typer.BadParameter("is not valid text (UTF-8)") from None
    return value


def check_event_type(value: str | None) -> str | None:
    """``quantum.<noun>.<verb>`` (``quantum.`` may be left out; ``*`` stands for any noun or verb)."""
    if value is not None and not _EVENT_TYPE.match(value if value.startswith("quantum.") else f"quantum.{value}"):
        raise typer.BadParameter("must be an event type such as quantum.stage.failed (* for any noun or verb)")
    return value


def check_positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"{value:g} is not above 0")
    return value


RunId = Annotated[
    str, typer.Argument(help="The workflow id, e.g. pipeline-<event id>.", metavar="PIPELINE_ID", callback=check_run_id)
]


def describe_options(err: ValidationError, options: dict[str, str]) -> str:
    """The problems of values given as options, on one line, each named by its option (``--reviewer``...)."""
    problems = []
    for problem in err.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        option = options.get(field, field or "the input")
        given = problem.get("input")
        context = problem.get("ctx") or {}
        if problem["type"] == "string_too_short" and context.get("min_length") == 1:
            problems.append(f"{option} must not be empty")
        elif problem["type"] == "string_too_long" and isinstance(given, str):
            limit = context.get("max_length")
            problems.append(f"{option} is {len(given)} characters long, over the {limit} limit")
        elif problem["type"] == "string_unicode":
            problems.append(f"{option} is not valid text (UTF-8)")
        elif problem["type"] == "string_pattern_mismatch" and isinstance(given, str) and has_control_characters(given):
            problems.append(f"{option} must not contain control characters")
        elif problem["type"] == "value_error" and context.get("error"):
            problems.append(f"{option} {context['error']}")
        else:
            problems.append(f"{option}: {problem['msg']}")
    return "; ".join(problems)
