"""{{title}}: typed settings from files, dicts and the environment.

Generated for the request: {{prompt}}

Sources are merged in order (later wins), then environment variables with the prefix override them. Every problem
(missing required key, bad value, unknown key) is collected into one :class:`ConfigError`.
"""

from __future__ import annotations

import configparser
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_REQUIRED: Any = object()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem found."""


@dataclass(frozen=True)
class Setting:
    """One setting: its name (lower case), its type (str, int, float or bool) and a default, or required."""

    name: str
    kind: type = str
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def from_json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"invalid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("the JSON configuration must be an object")
    return data


def from_ini(text: str, section: str = "settings") -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as err:
        raise ConfigError(f"invalid INI: {err}") from None
    if not parser.has_section(section):
        raise ConfigError(f"no [{section}] section (found: {', '.join(parser.sections()) or 'none'})")
    return dict(parser.items(section))


def from_env(environ: Mapping[str, str], prefix: str) -> dict[str, str]:
    """Variables starting with ``prefix`` (e.g. ``APP_``), the prefix dropped and the rest lower-cased."""
    if not prefix:
        raise ConfigError("an environment prefix is required, e.g. 'APP_'")
    wanted = prefix.upper()
    return {key[len(prefix) :].lower(): value for key, value in environ.items() if key.upper().startswith(wanted)}


def coerce(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
    elif kind in (int, float) and not isinstance(value, bool):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    elif kind is str and isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")


def load(
    settings: Sequence[Setting],
    *sources: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """The typed settings: ``sources`` merged in order, then the ``environ`` variables starting with ``prefix``."""
    merged: dict[str, Any] = {}
    for source in sources:
        merged.update({str(key).lower(): value for key, value in source.items()})
    if environ is not None:
        merged.update(from_env(environ, prefix))
    known = {setting.name for setting in settings}
    problems = [f"{key}: unknown setting" for key in sorted(set(merged) - known)]
    result: dict[str, Any] = {}
    for setting in settings:
        if setting.name in merged:
            try:
                result[setting.name] = coerce(setting.name, merged[setting.name], setting.kind)
            except ConfigError as err:
                problems.append(str(err))
        elif setting.required:
            problems.append(f"{setting.name}: required but not set")
        else:
            result[setting.name] = setting.default
    if problems:
        raise ConfigError("; ".join(problems))
    return result
