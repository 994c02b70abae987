"""QSecure: static security scanning of a run's code and infrastructure manifests.

Three scanners, each run as a child process with a clean environment, a time limit and bounded output:

* **bandit** over the run's Python code. A finding is CRITICAL when bandit rates it HIGH severity with at least
  MEDIUM confidence (``subprocess`` with ``shell=True`` on a variable, ``eval``, ``pickle``/``yaml.load`` on
  input...); otherwise it keeps bandit's severity.
* **detect-secrets** over the code and the manifests (``agents/secrets_runner.py``): a leaked credential (an AWS
  key, a private key, a token, a hard-coded password) is CRITICAL; a high-entropy string that names no known kind
  of secret is HIGH; a public IP address is LOW.
* **checkov** over infrastructure manifests (Kubernetes YAML/JSON, Dockerfiles, Terraform) when the run holds any,
  from its own virtual environment (``make .venv-checkov``): the binary is given to the agent. Manifests and no
  checkov fail the scan: it never skips them silently.

The scanned files cannot steer the scanners: their suppressions do not count (bandit's ``# nosec``,
detect-secrets' ``# pragma: allowlist secret``, checkov's skip comments and annotations: a check they skip is
reported as failed), no configuration is read from them (files are named one by one; checkov runs on copies in a
scratch directory, from an empty working and home directory), no path is excluded, and a file a scanner could not
read fails the scan. Python scanners run isolated (``-I``), so a module in the scanned code cannot stand in for
the scanner.

Each finding carries a fingerprint: sha256 of tool, rule, file and the offending line's text (spaces normalised),
not its number, so a finding keeps it when code moves; identical lines of one rule and file are told apart by
their order. The findings are compared with those of the last deployed release of the same project and
environment (kept by ``security.record_release`` under ``<data>/security/releases/``): each is ``new`` or
``unchanged``, and the release's findings that are gone are ``absent`` (fixed). The report is kept with the run
as SARIF 2.1.0 (``<run dir>/security/security.sarif``) beside the findings as JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from temporalio import activity

from agents.errors import INVALID_REQUEST, POLICY_VIOLATION, TOOL_FAILURE, failure
from agents.models import (
    SEVERITIES,
    Finding,
    RecordedRelease,
    RecordReleaseInput,
    ScanInput,
    ScanReport,
)
from agents.processes import child_env, run_bounded
from agents.workspace import Workspaces, files_under

FINDINGS = Counter("quantum_findings_total", "Security findings by tool and severity", ["tool", "severity"])
SCAN_TIMEOUT_SECONDS = 300
MAX_REPORT_BYTES = 32 * 1024 * 1024
MAX_FINDINGS = 200
"""Findings kept in the report (all are counted by severity, kept in the SARIF file and in the metrics)."""
MAX_KEPT_FINDINGS = 5000
"""Findings kept in the SARIF file and a release's baseline."""
MAX_FIXED_IN_REPORT = 20
MAX_LINE_BYTES = 64 * 1024
SECURITY_DIR = "security"
SARIF_FILE = "security.sarif"
FINDINGS_FILE = "findings.json"
MANIFEST_DIR = "manifests"
"""Where a run keeps infrastructure manifests beside its code (``<run dir>/manifests/``); ``src/`` is looked in too."""
SECRETS_RUNNER = Path(__file__).with_name("secrets_runner.py")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_URIS = {
    "bandit": "https://bandit.readthedocs.io/",
    "detect-secrets": "https://github.com/Yelp/detect-secrets",
    "checkov": "https://www.checkov.io/",
}

SECRET_SEVERITY = {"Base64HighEntropyString": "HIGH", "HexHighEntropyString": "HIGH", "IPPublicDetector": "LOW"}
"""detect-secrets plugins that do not name a credential; every other one is CRITICAL."""
SECRET_QUOTING_TESTS = {"B105", "B106", "B107"}
"""bandit tests whose text quotes the password they found."""

CHECKOV_SEVERITY = {
    # a container that can take the node: privileged, host namespaces, the container runtime's socket
    "CKV_K8S_16": "CRITICAL",
    "CKV_K8S_17": "CRITICAL",
    "CKV_K8S_18": "CRITICAL",
    "CKV_K8S_19": "CRITICAL",
    "CKV_K8S_27": "CRITICAL",
    # root, privilege escalation, capabilities, host paths, secrets in the environment
    "CKV_K8S_20": "HIGH",
    "CKV_K8S_23": "HIGH",
    "CKV_K8S_6": "HIGH",
    "CKV_K8S_25": "HIGH",
    "CKV_K8S_39": "HIGH",
    "CKV_K8S_35": "HIGH",
    "CKV_DOCKER_3": "HIGH",
    "CKV_DOCKER_8": "HIGH",
    # hygiene: probes, requests and limits, image digests, health checks
    "CKV_K8S_8": "LOW",
    "CKV_K8S_9": "LOW",
    "CKV_K8S_10": "LOW",
    "CKV_K8S_11": "LOW",
    "CKV_K8S_12": "LOW",
    "CKV_K8S_13": "LOW",
    "CKV_K8S_43": "LOW",
    "CKV_DOCKER_2": "LOW",
}
"""Checkov gives no severity without its platform: these are ours; any other failed check is MEDIUM."""


def severity_of(severity: str, confidence: str) -> str:
    """bandit's severity and confidence as ours."""
    if severity == "HIGH" and confidence in {"HIGH", "MEDIUM"}:
        return "CRITICAL"
    return severity


def bandit_message(test_id: str, text: str) -> str:
    """bandit's text, without the value it quotes when that value is a password (B105 to B107): a secret found in
    the code must not travel on in the report, the run's outputs and its history."""
    if test_id in SECRET_QUOTING_TESTS:
        return text.split(":", 1)[0][:500]
    return text[:500]


def is_manifest(path: Path) -> bool:
    """Whether ``path`` names an infrastructure manifest checkov reads: YAML or JSON (Kubernetes), a Dockerfile,
    Terraform."""
    name = path.name.lower()
    return (
        path.suffix.lower() in {".yaml", ".yml", ".json", ".tf", ".tf.json"}
        or name == "dockerfile"
        or name.startswith("dockerfile.")
        or name.endswith(".dockerfile")
    )


def normalised(text: str) -> str:
    """A line's text with its spaces normalised: indentation and runs of spaces do not change a fingerprint."""
    return " ".join(text.split())


def fingerprint(tool: str, rule: str, file: str, text: str, occurrence: int = 1) -> str:
    """sha256 of tool, rule, file and the normalised text of the offending line (never its number); the n-th
    identical line of one rule and file (n > 1) also hashes n."""
    parts = [tool, rule, file, normalised(text)]
    if occurrence > 1:
        parts.append(str(occurrence))
    return hashlib.sha256("\x00".join(parts).encode("utf-8", errors="surrogatepass")).hexdigest()


def _line_of(path: Path, line: int, cache: dict[Path, list[str]]) -> str:
    if path not in cache:
        try:
            cache[path] = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            cache[path] = []
    lines = cache[path]
    return lines[line - 1][:MAX_LINE_BYTES] if 0 < line <= len(lines) else ""


def with_fingerprints(findings: list[Finding], texts: list[str]) -> list[Finding]:
    """``findings`` with their fingerprints, ``texts[i]`` the offending text of ``findings[i]``, in file order."""
    order = sorted(range(len(findings)), key=lambda i: (findings[i].file, findings[i].line, findings[i].rule_id))
    seen: Tally[tuple[str, str, str, str]] = Tally()
    result = list(findings)
    for i in order:
        f = findings[i]
        key = (f.tool, f.rule_id, f.file, normalised(texts[i]))
        seen[key] += 1
        result[i] = f.model_copy(update={"fingerprint": fingerprint(*key, occurrence=seen[key])})
    return result


def _rank(finding: Finding) -> tuple[int, str, int, str]:
    return (SEVERITIES.index(finding.severity), finding.file, finding.line, finding.rule_id)


def compare(findings: list[Finding], baseline: list[Finding]) -> tuple[list[Finding], list[Finding]]:
    """The findings marked ``new`` or ``unchanged`` against ``baseline``, and the baseline's gone ones as
    ``absent``, by fingerprint."""
    before = {f.fingerprint for f in baseline}
    now = {f.fingerprint for f in findings}
    marked = [
        f.model_copy(update={"baseline_state": "unchanged" if f.fingerprint in before else "new"}) for f in findings
    ]
    fixed = [f.model_copy(update={"baseline_state": "absent"}) for f in baseline if f.fingerprint not in now]
    return marked, fixed


def sarif_level(severity: str) -> str:
    return {"CRITICAL": "error", "HIGH": "error", "MEDIUM": "warning"}.get(severity, "note")


def to_sarif(findings: list[Finding], fixed: list[Finding], *, run_id: str, tools: list[str]) -> dict[str, Any]:
    """A SARIF 2.1.0 log: one run per tool, each result with its rule, level, message, location, fingerprint and,
    when a release was compared, its baseline state (fixed findings as ``absent`` results)."""
    runs = []
    for tool in tools:
        results = [f for f in [*findings, *fixed] if f.tool == tool]
        rules: dict[str, dict[str, Any]] = {}
        for f in results:
            rules.setdefault(
                f.rule_id,
                {
                    "id": f.rule_id,
                    "shortDescription": {"text": f.message[:200] or f.rule_id},
                    "defaultConfiguration": {"level": sarif_level(f.severity)},
                },
            )
        index = {rule: n for n, rule in enumerate(rules)}
        sarif_results = []
        for f in results:
            result: dict[str, Any] = {
                "ruleId": f.rule_id,
                "ruleIndex": index[f.rule_id],
                "level": sarif_level(f.severity),
                "message": {"text": f.message or f.rule_id},
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": {"uri": f.file, "uriBaseId": "SRCROOT"},
                            "region": {"startLine": max(f.line, 1)},
                        }
                    }
                ],
                "partialFingerprints": {"quantumFingerprint/v1": f.fingerprint},
                "properties": {"severity": f.severity.lower(), "confidence": f.confidence.lower()},
            }
            if f.baseline_state:
                result["baselineState"] = f.baseline_state
            sarif_results.append(result)
        runs.append(
            {
                "tool": {
                    "driver": {"name": tool, "informationUri": TOOL_URIS.get(tool, ""), "rules": list(rules.values())}
                },
                "originalUriBaseIds": {"SRCROOT": {"uri": "src/", "description": {"text": "The run's code."}}},
                "automationDetails": {"id": f"quantum/{run_id}/{tool}"},
                "results": sarif_results,
            }
        )
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": runs}


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _load_findings(path: Path) -> list[Finding]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Finding.model_validate(item) for item in data.get("findings", [])]


class SecurityAgent:
    """QSecure: scans the run's code and manifests, keeps the report with the run, and the findings of each
    deployed release as the baseline of its project and environment."""

    def __init__(self, workspaces: Workspaces, *, releases: Path | None = None, checkov: str | None = None) -> None:
        """
        Args:
            workspaces: The runs' workspaces.
            releases: Where the findings of each project's last deployed release are kept (default
                ``<data>/security/releases`` beside the workspaces).
            checkov: The checkov program (its own virtual environment); None when there is none, and then a run
                with manifests fails its scan.
        """
        self.workspaces = workspaces
        self.releases = releases or workspaces.root.parent / "security" / "releases"
        self.checkov = checkov

    def baseline_path(self, project: str, environment: str) -> Path:
        return self.releases / project / f"{environment}.json"

    @activity.defn(name="security.scan")
    async def scan(self, inp: ScanInput) -> ScanReport:
        """Scan every file of the run's code (bandit, detect-secrets) and its manifests (detect-secrets, checkov);
        a scan that did not cover every file is a failure."""
        root = self.workspaces.for_run(inp.run_id)
        src = self.workspaces.src(inp.run_id)
        files = files_under(src)
        if not files:
            raise failure(INVALID_REQUEST, f"no code to scan for {inp.run_id}")
        manifests = sorted(
            {p for p in [*files_under(src, "*"), *files_under(root / MANIFEST_DIR, "*")] if is_manifest(p)}
        )
        findings: list[Finding] = []
        texts: list[str] = []
        lines: dict[Path, list[str]] = {}
        for finding, path in await self._bandit(src, files):
            findings.append(finding)
            texts.append(_line_of(path, finding.line, lines))
        for finding, path in await self._secrets(src, [*files, *manifests]):
            findings.append(finding)
            texts.append(_line_of(path, finding.line, lines))
        tools = ["bandit", "detect-secrets"]
        if manifests:
            for finding, resource in await self._checkov(src, manifests):
                findings.append(finding)
                texts.append(resource)
            tools.append("checkov")
        findings = sorted(with_fingerprints(findings, texts), key=_rank)
        for finding in findings:
            FINDINGS.labels(finding.tool, finding.severity).inc()

        baseline: list[Finding] | None = None
        baseline_run = baseline_release = None
        if inp.project and inp.environment:
            path = self.baseline_path(inp.project, inp.environment)
            if path.is_file():
                data = json.loads(path.read_text(encoding="utf-8"))
                baseline = [Finding.model_validate(item) for item in data.get("findings", [])]
                baseline_run, baseline_release = data.get("run_id"), data.get("release")
        fixed: list[Finding] = []
        if baseline is not None:
            findings, fixed = compare(findings, baseline)
        elif inp.project and inp.environment:  # no release yet: everything is new
            findings = [f.model_copy(update={"baseline_state": "new"}) for f in findings]

        kept = findings[:MAX_KEPT_FINDINGS]
        sarif_path = self.workspaces.claim(inp.run_id) / SECURITY_DIR / SARIF_FILE
        sarif = to_sarif(kept, fixed[:MAX_KEPT_FINDINGS], run_id=inp.run_id, tools=tools)
        write_atomically(sarif_path, json.dumps(sarif, indent=1))
        write_atomically(
            sarif_path.with_name(FINDINGS_FILE),
            json.dumps({"run_id": inp.run_id, "findings": [f.model_dump(mode="json") for f in kept]}),
        )
        counts = Tally(f.severity for f in findings)
        states = Tally(f.baseline_state for f in findings)
        return ScanReport(
            tools=tools,
            scanned_files=len(files) + len(manifests),
            findings=findings[:MAX_FINDINGS],
            criticals=counts["CRITICAL"],
            highs=counts["HIGH"],
            mediums=counts["MEDIUM"],
            lows=counts["LOW"],
            manifests=len(manifests),
            baseline_release=baseline_release,
            baseline_run=baseline_run,
            new_findings=states["new"] if inp.project and inp.environment else None,
            fixed_findings=len(fixed) if inp.project and inp.environment else None,
            unchanged_findings=states["unchanged"] if inp.project and inp.environment else None,
            fixed=fixed[:MAX_FIXED_IN_REPORT],
            sarif=str(sarif_path),
        )

    async def _bandit(self, src: Path, files: list[Path]) -> list[tuple[Finding, Path]]:
        """bandit over ``files``: ``# nosec`` ignored (``--ignore-nosec``), no configuration read (each file is
        named, so no ``.bandit`` is looked for), no path excluded (``-x ''``: bandit's default exclusions would skip
        a file under ``.tox`` or ``__pycache__``)."""
        argv = [sys.executable, "-I", "-m", "bandit", "-f", "json", "-q", "--ignore-nosec", "-x", ""]
        report = await self._run_json("bandit", [*argv, *(p.relative_to(src).as_posix() for p in files)], cwd=src)
        expected = {p.relative_to(src).as_posix() for p in files}
        errors = report.get("errors", [])
        if errors:
            unscanned = "; ".join(f"{e.get('filename')}: {e.get('reason')}" for e in errors[:5])
            raise failure(
                POLICY_VIOLATION, f"bandit could not scan every file, so the scan proves nothing: {unscanned}"
            )
        scanned = {name.removeprefix("./") for name in report.get("metrics", {}) if name != "_totals"}
        if not expected <= scanned:
            missing = ", ".join(sorted(expected - scanned)[:5])
            raise failure(POLICY_VIOLATION, f"bandit skipped files, so the scan proves nothing: {missing}")
        found = []
        for item in report.get("results", []):
            name = str(item["filename"]).removeprefix("./")
            finding = Finding(
                tool="bandit",
                rule_id=f"{item['test_id']}:{item['test_name']}",
                severity=severity_of(item["issue_severity"], item["issue_confidence"]),
                confidence=item["issue_confidence"],
                file=name,
                line=int(item["line_number"]),
                message=bandit_message(str(item["test_id"]), str(item["issue_text"])),
            )
            found.append((finding, src / name))
        return found

    async def _secrets(self, src: Path, files: list[Path]) -> list[tuple[Finding, Path]]:
        """detect-secrets over ``files`` (code and manifests), through ``agents/secrets_runner.py``."""
        names = [os.path.relpath(p, src) for p in files]
        report = await self._run_json("detect-secrets", [sys.executable, "-I", str(SECRETS_RUNNER), *names], cwd=src)
        unreadable = report.get("unreadable", [])
        if unreadable:
            which = "; ".join(f"{u.get('file')}: {u.get('reason')}" for u in unreadable[:5])
            raise failure(
                POLICY_VIOLATION, f"detect-secrets could not read every file, so the scan proves nothing: {which}"
            )
        found = []
        for item in report.get("results", []):
            plugin = str(item["plugin"])
            kind = str(item["type"])
            finding = Finding(
                tool="detect-secrets",
                rule_id=plugin,
                severity=SECRET_SEVERITY.get(plugin, "CRITICAL"),
                confidence="HIGH" if plugin not in SECRET_SEVERITY else "MEDIUM",
                file=str(item["file"]),
                line=int(item["line"]),
                message=f"{kind} in the code: a credential written in the source leaks with it; take it from the "
                "environment or a secret store, and revoke this one"
                if plugin not in SECRET_SEVERITY
                else f"{kind}: may be a credential",
            )
            found.append((finding, src / str(item["file"])))
        return found

    async def _checkov(self, src: Path, manifests: list[Path]) -> list[tuple[Finding, str]]:
        """checkov over copies of ``manifests`` in a scratch directory, run from an empty directory with an empty
        home (no ``.checkov.yaml`` read from anywhere), downloading nothing; a check the manifests skip (a
        ``checkov:skip`` comment or annotation) is reported as failed. Each finding comes with its resource, which
        names it in the fingerprint."""
        if not self.checkov:
            listed = ", ".join(os.path.relpath(p, src) for p in manifests[:5])
            raise failure(
                POLICY_VIOLATION,
                f"the run holds infrastructure manifests ({listed}) but checkov is missing, so they cannot be "
                "scanned: run `make .venv-checkov` or set QUANTUM_CHECKOV_BIN",
            )
        with tempfile.TemporaryDirectory(prefix="quantum-checkov-") as tmp:
            base = Path(tmp)
            files, work, home = base / "files", base / "work", base / "home"
            work.mkdir()
            home.mkdir()
            names: dict[str, str] = {}
            for path in manifests:
                name = os.path.relpath(path, src)
                copy = files / path.relative_to(src.parent)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy, follow_symlinks=False)
                names[str(copy)] = name
            argv = [self.checkov, "-o", "json", "--skip-download", "--skip-results-upload"]
            argv += ["--framework", "kubernetes", "dockerfile", "terraform"]
            for copy_name in names:
                argv += ["-f", copy_name]
            report = await self._run_json("checkov", argv, cwd=work, env=child_env({"HOME": str(home)}))
        runs = report if isinstance(report, list) else [report]
        found = []
        for run in runs:
            if not isinstance(run, dict):
                continue
            if run.get("summary", {}).get("parsing_errors"):
                raise failure(POLICY_VIOLATION, "checkov could not parse every manifest, so the scan proves nothing")
            results = run.get("results", {})
            for item in [*results.get("failed_checks", []), *results.get("skipped_checks", [])]:
                check = str(item.get("check_id"))
                name = names.get(str(item.get("file_abs_path")), str(item.get("file_path", "")).lstrip("/"))
                first = (item.get("file_line_range") or [1])[0]
                severity = str(item.get("severity") or CHECKOV_SEVERITY.get(check, "MEDIUM")).upper()
                finding = Finding(
                    tool="checkov",
                    rule_id=check,
                    severity=severity if severity in SEVERITIES else "MEDIUM",
                    confidence="HIGH",
                    file=name,
                    line=int(first or 1),
                    message=f"{item.get('check_name', check)} ({item.get('resource', '')})"[:500],
                )
                found.append((finding, str(item.get("resource", ""))))
        return found

    async def _run_json(self, tool: str, argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> Any:
        done = await run_bounded(argv, cwd=cwd, env=env, timeout=SCAN_TIMEOUT_SECONDS, max_output=MAX_REPORT_BYTES)
        if done.timed_out:
            raise failure(TOOL_FAILURE, f"{tool} did not finish within {SCAN_TIMEOUT_SECONDS} s")
        if done.stdout_truncated:
            raise failure(TOOL_FAILURE, f"{tool}'s report is over {MAX_REPORT_BYTES} bytes")
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError:
            raise failure(
                TOOL_FAILURE,
                f"{tool} gave no JSON report (exit {done.returncode}): {done.stderr.decode(errors='replace')[-500:]}",
            ) from None

    @activity.defn(name="security.record_release")
    async def record_release(self, inp: RecordReleaseInput) -> RecordedRelease:
        """Keep the findings of a deployed and verified release as the baseline of its project and environment;
        the next run of both is compared with it. Idempotent: recording one run twice writes the same file."""
        source = self.workspaces.for_run(inp.run_id) / SECURITY_DIR / FINDINGS_FILE
        if not self.workspaces.owned_by(inp.run_id) or not source.is_file():
            raise failure(INVALID_REQUEST, f"{inp.run_id} has no security scan to record")
        findings = _load_findings(source)
        target = self.baseline_path(inp.project, inp.environment)
        record = {
            "run_id": inp.run_id,
            "project": inp.project,
            "environment": inp.environment,
            "release": inp.release,
            "findings": [f.model_dump(mode="json", exclude={"baseline_state"}) for f in findings],
        }
        write_atomically(target, json.dumps(record))
        return RecordedRelease(path=str(target), findings=len(findings))

    def activities(self) -> list[Callable[..., Any]]:
        return [self.scan, self.record_release]
