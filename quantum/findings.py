"""A run's security findings as the CLI shows them, read from the SARIF report the worker keeps with the run.

The report lives in the worker's data directory (``<data>/workspaces/<run dir>/security/security.sarif``), so
``quantum pipeline show --findings`` reads it there: the CLI must share the worker's ``QUANTUM_DATA_DIR``. Everything
in it (messages, file names, rule ids) comes from scanned code or scanners and is shown as text, never as markup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from agents.security import SARIF_FILE, SECURITY_DIR
from agents.workspace import run_dir_name
from quantum.views import plain

MAX_SARIF_BYTES = 64 * 1024 * 1024
SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "dim"}
STATE_STYLE = {"new": "bold", "unchanged": "dim", "absent": "green"}


class FindingsUnavailable(Exception):
    """The run's report cannot be read: missing, too large or not SARIF."""


@dataclass(frozen=True)
class FindingRow:
    tool: str
    rule: str
    severity: str
    file: str
    line: int
    message: str
    state: str
    fingerprint: str


def sarif_path(data_dir: Path, run_id: str) -> Path:
    return data_dir / "workspaces" / run_dir_name(run_id) / SECURITY_DIR / SARIF_FILE


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def read_findings(path: Path) -> list[FindingRow]:
    """The results of the SARIF log at ``path``, worst first (fixed ones, ``absent``, last).

    Raises:
        FindingsUnavailable: It is missing, larger than 64 MiB, or not a SARIF 2.1.0 log.
    """
    try:
        if path.stat().st_size > MAX_SARIF_BYTES:
            raise FindingsUnavailable(f"{path} is larger than {MAX_SARIF_BYTES} bytes")
        log = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FindingsUnavailable(
            f"no security report at {path}: the run has not been scanned yet, or the worker keeps its data "
            "elsewhere (QUANTUM_DATA_DIR)"
        ) from None
    except (OSError, ValueError) as err:
        raise FindingsUnavailable(f"{path} cannot be read as JSON: {err}") from None
    if not isinstance(log, dict) or log.get("version") != "2.1.0" or not isinstance(log.get("runs"), list):
        raise FindingsUnavailable(f"{path} is not a SARIF 2.1.0 log")
    rows: list[FindingRow] = []
    for run in log["runs"]:
        if not isinstance(run, dict):
            continue
        tool = _text(run.get("tool", {}).get("driver", {}).get("name")) if isinstance(run.get("tool"), dict) else ""
        for result in run.get("results") or []:
            if not isinstance(result, dict):
                continue
            props: dict[str, Any] = result["properties"] if isinstance(result.get("properties"), dict) else {}
            where: dict[str, Any] = {}
            locations = result.get("locations")
            if isinstance(locations, list) and locations and isinstance(locations[0], dict):
                physical = locations[0].get("physicalLocation")
                where = physical if isinstance(physical, dict) else {}
            artifact: dict[str, Any] = (
                where["artifactLocation"] if isinstance(where.get("artifactLocation"), dict) else {}
            )
            region: dict[str, Any] = where["region"] if isinstance(where.get("region"), dict) else {}
            line = region.get("startLine")
            message: dict[str, Any] = result["message"] if isinstance(result.get("message"), dict) else {}
            fingerprints = result.get("partialFingerprints")
            rows.append(
                FindingRow(
                    tool=tool,
                    rule=_text(result.get("ruleId")),
                    severity=_text(props.get("severity")) or _text(result.get("level")),
                    file=_text(artifact.get("uri")),
                    line=line if isinstance(line, int) else 0,
                    message=_text(message.get("text")),
                    state=_text(result.get("baselineState")),
                    fingerprint=next(iter(fingerprints.values()), "") if isinstance(fingerprints, dict) else "",
                )
            )
    order = list(SEVERITY_STYLE)
    rows.sort(
        key=lambda r: (
            r.state == "absent",
            order.index(r.severity) if r.severity in order else len(order),
            r.file,
            r.line,
        )
    )
    return rows


def findings_table(rows: list[FindingRow], *, title: str = "security findings") -> Table:
    """The findings, one a row; every cell is literal text (see :func:`quantum.views.plain`)."""
    table = Table(title=plain(f"{title}: {len(rows)}"), title_justify="left")
    for column in ("severity", "state", "tool", "rule", "where", "message", "fingerprint"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            plain(row.severity, style=SEVERITY_STYLE.get(row.severity, ""), one_line=True),
            plain("fixed" if row.state == "absent" else row.state, style=STATE_STYLE.get(row.state, ""), one_line=True),
            plain(row.tool, one_line=True),
            plain(row.rule, one_line=True),
            plain(f"{row.file}:{row.line}", one_line=True),
            plain(row.message),
            plain(row.fingerprint[:12], style="dim", one_line=True),
        )
    if not rows:
        table.caption = Text("no findings")
    return table
