"""{{title}}: CSV text to typed records and JSON.

Generated for the request: {{prompt}}

A schema maps each column name to a converter (``int``, ``float``, ``str``, :func:`parse_bool` or any callable that
raises ``ValueError`` on bad input). Errors name the line and the column, so a bad file is easy to fix.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

Converter = Callable[[str], Any]

_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


class CsvError(ValueError):
    """A problem with the CSV input; ``line`` is the 1-based line it was found on, when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


def parse_bool(text: str) -> bool:
    """``true/yes/y/1/on`` or ``false/no/n/0/off``, any case."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_csv(
    text: str,
    schema: Mapping[str, Converter],
    *,
    delimiter: str = ",",
    optional: Collection[str] = (),
    strict: bool = True,
) -> list[dict[str, Any]]:
    """Records of ``text`` typed by ``schema``.

    Every schema column must be in the header unless it is ``optional`` (then it is ``None`` when absent or empty).
    With ``strict``, columns the schema does not know are an error; otherwise they are ignored. Blank lines are skipped.
    """
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise CsvError("empty input: no header row") from None
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise CsvError(f"duplicate columns: {', '.join(duplicates)}", 1)
    missing = [name for name in schema if name not in header and name not in optional]
    if missing:
        raise CsvError(f"missing columns: {', '.join(missing)}", 1)
    unknown = [name for name in header if name not in schema]
    if strict and unknown:
        raise CsvError(f"unknown columns: {', '.join(unknown)}", 1)
    records: list[dict[str, Any]] = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CsvError(f"expected {len(header)} fields, got {len(row)}", reader.line_num)
        record: dict[str, Any] = {name: None for name in optional if name in schema}
        for name, cell in zip(header, row):  # lengths were checked above
            convert = schema.get(name)
            if convert is None:
                continue
            value = cell.strip()
            if not value and name in optional:
                continue
            try:
                record[name] = convert(value)
            except ValueError as err:
                raise CsvError(f"column {name!r}: {err}", reader.line_num) from None
        records.append(record)
    return records


def to_json(records: list[dict[str, Any]], *, indent: int | None = None) -> str:
    """``records`` as a JSON array (values JSON cannot hold are written as strings)."""
    return json.dumps(records, indent=indent, default=str)


def csv_to_json(text: str, schema: Mapping[str, Converter], **options: Any) -> str:
    """:func:`parse_csv` then :func:`to_json`."""
    return to_json(parse_csv(text, schema, **options))
