"""pytest in the sandbox: the scratch copy it runs in, its command line, and the reports it leaves behind.

Shared by the generated tests (:mod:`agents.testgen`) and the request's acceptance checks (:mod:`agents.acceptance`).
Each sandboxed run gets a fresh scratch copy of the run's code; what pytest leaves there was written beside the code
under test, so it is read through :func:`agents.workspace.read_untrusted` (no link followed, regular files only, a
size bound) and the XML parsed by ``defusedxml``; it counts only when it agrees with the exit status the worker saw.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from defusedxml import ElementTree as DefusedET
from defusedxml.common import DefusedXmlException

from agents.sandbox import Sandbox
from agents.workspace import UntrustedFile, copy_files, read_untrusted

PYTEST_INI = "[pytest]\naddopts = -p no:cacheprovider\nasyncio_default_fixture_loop_scope = function\n"
JUNIT_REPORT = "reports/junit.xml"
COVERAGE_REPORT = "reports/coverage.json"
MAX_JUNIT_BYTES = 4 * 1024 * 1024
MAX_COVERAGE_BYTES = 8 * 1024 * 1024


def prepare_scratch(root: Path, scratch: Path, *dirs: str) -> None:
    """Fill a fresh scratch directory with copies of the run's code and of its ``dirs`` (links never copied), a
    ``pytest.ini`` and an empty ``reports`` directory."""
    copy_files(root / "src", scratch / "src")
    for name in dirs:
        copy_files(root / name, scratch / name)
    (scratch / "pytest.ini").write_text(PYTEST_INI)
    (scratch / "reports").mkdir()


PYTEST_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
"""pytest loads only the plugins its command line names: looking up and importing every installed plugin cost more
than a second at each of a run's several pytest starts (its tests, then each mutant)."""
PLUGINS = ("-p", "pytest_asyncio.plugin")
"""The plugins tests may rely on: ``async def`` tests under pytest-asyncio."""


def sandbox_env(sandbox: Sandbox, scratch: Path) -> dict[str, str]:
    """The environment of pytest in the sandbox: the code importable, coverage data kept with the reports."""
    inside = sandbox.workdir(scratch)
    return {"PYTHONPATH": f"{inside}/src", "COVERAGE_FILE": f"{inside}/reports/.coverage", **PYTEST_ENV}


def pytest_argv(
    sandbox: Sandbox,
    scratch: Path,
    tests: str,
    *,
    coverage_of: str | None = None,
    junit: bool = False,
    options: tuple[str, ...] = (),
) -> list[str]:
    """pytest over ``scratch/tests`` as seen from inside the sandbox: line coverage of the module ``coverage_of``
    (else the coverage plugin off) and a JUnit report when asked."""
    inside = sandbox.workdir(scratch)
    argv = [sys.executable, "-m", "pytest", "-q", "-c", f"{inside}/pytest.ini", "--rootdir", inside, *PLUGINS]
    if coverage_of:
        argv += ["-p", "pytest_cov.plugin", f"--cov={coverage_of}", f"--cov-report=json:{inside}/{COVERAGE_REPORT}"]
    if junit:
        argv.append(f"--junitxml={inside}/{JUNIT_REPORT}")
    return [*argv, *options, f"{inside}/{tests}"]


@dataclass(frozen=True)
class JunitCase:
    """One ``<testcase>`` of a JUnit report: who it is, how it ended, and what the report says about it (untrusted
    text, unbounded: whoever shows it bounds it)."""

    classname: str
    name: str
    outcome: str  # "passed", "failed", "error" or "skipped"
    message: str = ""
    text: str = ""


@dataclass
class Reports:
    """What the worker could trust of the reports pytest left in a scratch directory."""

    junit: dict[str, int] | None = None
    junit_bytes: bytes = b""
    cases: list[JunitCase] | None = None
    coverage: float | None = None
    problems: list[str] = field(default_factory=list)


def read_reports(scratch: Path, *, coverage: bool = True, cases: bool = False) -> Reports:
    """Read the JUnit report (and the coverage report, and each test case, when asked) from a scratch directory
    written by untrusted code; what cannot be used is a problem, never an exception."""
    found = Reports()
    try:
        found.junit_bytes = read_untrusted(scratch, JUNIT_REPORT, max_bytes=MAX_JUNIT_BYTES)
        found.junit = junit_counts(found.junit_bytes)
        if cases:
            found.cases = junit_cases(found.junit_bytes)
    except UntrustedFile as err:
        found.problems.append(f"JUnit report: {err.reason}")
    except ValueError as err:
        found.problems.append(f"JUnit report: {err}")
    if not coverage:
        return found
    try:
        found.coverage = coverage_percent(read_untrusted(scratch, COVERAGE_REPORT, max_bytes=MAX_COVERAGE_BYTES))
    except UntrustedFile as err:
        found.problems.append(f"coverage report: {err.reason}")
    except ValueError as err:
        found.problems.append(f"coverage report: {err}")
    return found


def _junit_suites(data: bytes) -> list[ElementTree.Element]:
    try:
        root = DefusedET.fromstring(data)
    except (ElementTree.ParseError, DefusedXmlException) as err:
        raise ValueError(f"not a JUnit XML report ({err})") from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite") if root.tag == "testsuites" else None
    if not suites:
        raise ValueError(f"not a JUnit XML report (root <{str(root.tag)[:40]}>)")
    return suites


def junit_counts(data: bytes) -> dict[str, int]:
    """Test counts from a JUnit XML report (parsed with entity expansion and external references refused)."""
    suites = _junit_suites(data)
    total = failed = errors = skipped = 0
    try:
        for suite in suites:
            total += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0))
            errors += int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", 0))
    except ValueError:
        raise ValueError("its counts are not numbers") from None
    if min(total, failed, errors, skipped) < 0 or failed + errors + skipped > total:
        raise ValueError(f"its counts do not add up ({total} tests, {failed} failed, {errors} errors)")
    return {"passed": total - failed - errors - skipped, "failed": failed, "errors": errors, "skipped": skipped}


def junit_cases(data: bytes) -> list[JunitCase]:
    """Every test case of a JUnit XML report with its outcome; an error (setup, teardown) outweighs a failure."""
    found = []
    for suite in _junit_suites(data):
        for case in suite.iter("testcase"):
            outcome, message, text = "passed", "", ""
            for kind in ("skipped", "failure", "error"):
                child = case.find(kind)
                if child is not None:
                    outcome = {"failure": "failed"}.get(kind, kind)
                    message, text = child.get("message", ""), child.text or ""
            found.append(JunitCase(case.get("classname", ""), case.get("name", ""), outcome, message, text))
    return found


def coverage_percent(data: bytes) -> float:
    """Line coverage from coverage.py's JSON report, refusing one that measured no file."""
    try:
        report = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ValueError("not JSON") from None
    totals = report.get("totals") if isinstance(report, dict) else None
    percent = totals.get("percent_covered") if isinstance(totals, dict) else None
    if not isinstance(percent, (int, float)) or isinstance(percent, bool) or not 0 <= percent <= 100:
        raise ValueError("no total percentage between 0 and 100")
    if not isinstance(report.get("files"), dict) or not report["files"]:
        raise ValueError("it measured no file")
    return float(percent)
