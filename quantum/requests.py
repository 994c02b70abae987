"""Reading pipeline requests from files, with errors that name the field and the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from events.models import at_edge

EXAMPLES = Path(__file__).parent / "examples"


class RequestError(ValueError):
    """A request file that cannot be used; the message says which field and why."""


def describe_validation_error(err: ValidationError) -> str:
    """One line per problem: ``field.path: message``."""
    lines = []
    for problem in err.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(request)"
        lines.append(f"  {where}: {problem['msg']}")
    return "\n".join(lines)


def load_model(path: Path, model: type[BaseModel]) -> Any:
    """Parse ``path`` (JSON or YAML) as ``model``; raise :class:`RequestError` naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RequestError(f"cannot read {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) if path.suffix in {".yaml", ".yml"} else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise RequestError(
            f"{path} is not valid {'YAML' if path.suffix in {'.yaml', '.yml'} else 'JSON'}: {err}"
        ) from None
    if not isinstance(data, dict):
        raise RequestError(f"{path} must hold an object with the request's fields, not {type(data).__name__}")
    try:
        return at_edge(model, data)
    except ValidationError as err:
        raise RequestError(f"{path} is not a valid {model.__name__}:\n{describe_validation_error(err)}") from None
