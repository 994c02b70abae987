"""{{title}}: Markdown and ASCII tables.

Generated for the request: {{prompt}}

``render_markdown`` writes a GitHub-flavoured Markdown table (``|`` in cells escaped), ``render_ascii`` a boxed
plain-text one, and ``parse_markdown`` reads a Markdown table back into headers, rows and alignments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Align = Literal["left", "right", "center"]
_SEPARATOR = re.compile(r"^(:?)-+(:?)$")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    align: list[Align]


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def _pad(text: str, width: int, align: Align) -> str:
    if align == "right":
        return text.rjust(width)
    if align == "center":
        return text.center(width)
    return text.ljust(width)


def _prepare(
    headers: Sequence[str], rows: Sequence[Sequence[object]], align: Sequence[Align] | None, min_width: int
) -> tuple[list[str], list[list[str]], list[Align], list[int]]:
    head = [_cell(h) for h in headers]
    body = [[_cell(v) for v in row] for row in rows]
    for number, row in enumerate(body, 1):
        if len(row) != len(head):
            raise ValueError(f"row {number} has {len(row)} cells, expected {len(head)}")
    aligns: list[Align] = list(align) if align is not None else ["left"] * len(head)
    if len(aligns) != len(head) or any(a not in ("left", "right", "center") for a in aligns):
        raise ValueError("align needs one of 'left', 'right', 'center' per column")
    widths = [max([min_width, len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(head)]
    return head, body, aligns, widths


def render_markdown(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, align: Sequence[Align] | None = None
) -> str:
    """A Markdown table, columns padded to their widest cell (at least 3, for the separator)."""
    head, body, aligns, widths = _prepare(headers, rows, align, 3)
    marks = {"left": (":", "-"), "right": ("-", ":"), "center": (":", ":")}
    separator = [marks[a][0] + "-" * (w - 2) + marks[a][1] for a, w in zip(aligns, widths, strict=True)]
    return "\n".join(
        "| " + " | ".join(_pad(c, w, a) for c, w, a in zip(line, widths, aligns, strict=True)) + " |"
        for line in [head, separator, *body]
    )


def render_ascii(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, align: Sequence[Align] | None = None
) -> str:
    """A boxed plain-text table (``+---+`` borders, ``=`` under the header)."""
    head, body, aligns, widths = _prepare(headers, rows, align, 1)
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    under = border.replace("-", "=")

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(_pad(c, w, a) for c, w, a in zip(cells, widths, aligns, strict=True)) + " |"

    return "\n".join([border, line(head), under, *(line(row) for row in body), border])


def _split(line: str) -> list[str]:
    text = line.strip()
    text = text[1:] if text.startswith("|") else text
    text = text[:-1] if text.endswith("|") and not text.endswith("\\|") else text
    return [cell.strip().replace("\\|", "|") for cell in _UNESCAPED_PIPE.split(text)]


def parse_markdown(text: str) -> Table:
    """The headers, rows and alignments of a Markdown table; ValueError if it is not one."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError("a Markdown table needs a header line and a separator line")
    headers, marks = _split(lines[0]), _split(lines[1])
    matches = [_SEPARATOR.match(mark) for mark in marks]
    if len(marks) != len(headers) or not all(matches):
        raise ValueError("line 2 is not a separator like | --- | :---: | ---: | for every column")
    align: list[Align] = []
    for match in matches:
        left, right = match.groups() if match else ("", "")
        align.append("center" if left and right else "right" if right else "left")
    rows = []
    for number, line in enumerate(lines[2:], 3):
        cells = _split(line)
        if len(cells) != len(headers):
            raise ValueError(f"line {number} has {len(cells)} cells, expected {len(headers)}")
        rows.append(cells)
    return Table(headers, rows, align)
