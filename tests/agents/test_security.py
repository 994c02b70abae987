"""QSecure with the real scanners: bandit, detect-secrets, and checkov from its own virtual environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from agents.models import Finding, RecordReleaseInput, ScanInput, ScanReport
from agents.security import SecurityAgent, fingerprint
from agents.workspace import Workspaces
from events.models import PipelineRequest
from quantum.findings import findings_table, read_findings
from quantum.settings import PROJECT_ROOT, Settings
from tests.cli.test_plain_text import MARKUP, rendered

env = ActivityEnvironment()

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEZ"
CREDENTIALS = (
    f'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLF"\naws_secret_access_key = "{SECRET_KEY}"  # pragma: allowlist secret\n'
)
SHELL = "import subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n"
ROOT_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations:
    checkov.io/skip1: CKV_K8S_20=the manifest says it is fine
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx:1.27
          securityContext:
            runAsUser: 0
"""
CHECKOV = PROJECT_ROOT / ".venv-checkov" / "bin" / "checkov"
needs_checkov = pytest.mark.skipif(
    not CHECKOV.is_file(), reason=f"checkov is not installed at {CHECKOV}: run `make .venv-checkov` (make test does)"
)


@pytest.fixture
def workspaces(tmp_path: Path) -> Workspaces:
    return Workspaces(tmp_path / "data" / "workspaces")


def plant(workspaces: Workspaces, run_id: str, files: dict[str, str], manifests: dict[str, str] | None = None) -> None:
    workspaces.claim(run_id)
    src = workspaces.src(run_id)
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    for name, text in (manifests or {}).items():
        path = workspaces.for_run(run_id) / "manifests" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


async def test_a_hard_coded_aws_key_is_critical_and_never_repeated(workspaces: Workspaces) -> None:
    plant(workspaces, "pipeline-keys", {"settings.py": CREDENTIALS})
    report = await env.run(SecurityAgent(workspaces).scan, ScanInput(run_id="pipeline-keys"))
    secrets = [f for f in report.findings if f.tool == "detect-secrets"]
    assert {(f.rule_id, f.line) for f in secrets if f.critical} >= {("AWSKeyDetector", 1), ("KeywordDetector", 2)}
    assert report.criticals >= 2 and report.criticals == sum(f.critical for f in report.findings)
    # the pragma of the scanned code does not hide line 2, and the secret itself goes nowhere
    assert SECRET_KEY not in report.model_dump_json()
    assert SECRET_KEY not in Path(str(report.sarif)).read_text()
    assert all(len(f.fingerprint) == 64 for f in report.findings)


async def test_the_sarif_report_is_valid_and_names_the_findings(workspaces: Workspaces) -> None:
    plant(workspaces, "pipeline-sarif", {"ops.py": SHELL, "settings.py": CREDENTIALS})
    report = await env.run(
        SecurityAgent(workspaces).scan, ScanInput(run_id="pipeline-sarif", project="shop", environment="dev")
    )
    path = workspaces.for_run("pipeline-sarif") / "security" / "security.sarif"
    assert report.sarif == str(path)
    log = json.loads(path.read_text())
    assert log["version"] == "2.1.0" and "sarif-2.1.0" in log["$schema"]
    assert [run["tool"]["driver"]["name"] for run in log["runs"]] == ["bandit", "detect-secrets"]
    results = []
    for run in log["runs"]:
        rules = [rule["id"] for rule in run["tool"]["driver"]["rules"]]
        for result in run["results"]:
            assert result["ruleId"] == rules[result["ruleIndex"]]
            assert result["level"] in {"error", "warning", "note"}
            assert result["message"]["text"]
            location = result["locations"][0]["physicalLocation"]
            assert location["region"]["startLine"] >= 1
            assert result["baselineState"] == "new"  # nothing deployed before
            results.append(
                (
                    result["ruleId"],
                    location["artifactLocation"]["uri"],
                    result["partialFingerprints"]["quantumFingerprint/v1"],
                )
            )
    assert {(f.rule_id, f.file, f.fingerprint) for f in report.findings} == set(results)
    assert ("B602:subprocess_popen_with_shell_equals_true", "ops.py") in {(r, f) for r, f, _ in results}
    assert ("AWSKeyDetector", "settings.py") in {(r, f) for r, f, _ in results}
    # the CLI reads it back
    rows = read_findings(path)
    assert rows[0].severity == "critical" and len(rows) == len(report.findings)


async def test_fingerprints_survive_a_line_shift(workspaces: Workspaces) -> None:
    plant(workspaces, "pipeline-before", {"ops.py": SHELL, "settings.py": CREDENTIALS})
    plant(
        workspaces,
        "pipeline-after",
        {
            "ops.py": '"""Moved down."""\n\n\n'
            + SHELL.replace("    return", "        return").replace("def run", "if True:\n    def run"),
            "settings.py": "\n\n" + CREDENTIALS,
        },
    )
    agent = SecurityAgent(workspaces)
    before = await env.run(agent.scan, ScanInput(run_id="pipeline-before"))
    after = await env.run(agent.scan, ScanInput(run_id="pipeline-after"))
    assert {f.fingerprint for f in before.findings} == {f.fingerprint for f in after.findings}
    assert {(f.file, f.line) for f in before.findings} != {(f.file, f.line) for f in after.findings}
    # the fingerprint is of tool, rule, file and text, not of the line number
    assert fingerprint("bandit", "B1", "a.py", "x =  1") == fingerprint("bandit", "B1", "a.py", "  x = 1")
    assert fingerprint("bandit", "B1", "a.py", "x = 1") != fingerprint("bandit", "B1", "b.py", "x = 1")


async def test_the_next_run_is_compared_with_the_last_deployed_release(workspaces: Workspaces) -> None:
    agent = SecurityAgent(workspaces)
    plant(workspaces, "pipeline-first", {"ops.py": SHELL})
    first = await env.run(agent.scan, ScanInput(run_id="pipeline-first", project="shop", environment="dev"))
    assert first.baseline_release is None and first.new_findings == len(first.findings) and first.fixed_findings == 0
    recorded = await env.run(
        agent.record_release,
        RecordReleaseInput(run_id="pipeline-first", project="shop", environment="dev", release="r1"),
    )
    again = await env.run(  # idempotent
        agent.record_release,
        RecordReleaseInput(run_id="pipeline-first", project="shop", environment="dev", release="r1"),
    )
    assert recorded == again and recorded.findings == len(first.findings)

    # the shell call is fixed, the import stays, a key is added (two lines down)
    fixed_shell = SHELL.replace("subprocess.call(cmd, shell=True)", "subprocess.call([cmd])")
    plant(workspaces, "pipeline-second", {"ops.py": "\n\n" + fixed_shell, "settings.py": CREDENTIALS})
    second = await env.run(agent.scan, ScanInput(run_id="pipeline-second", project="shop", environment="dev"))
    assert second.baseline_release == "r1" and second.baseline_run == "pipeline-first"
    new = {f.rule_id for f in second.findings if f.baseline_state == "new"}
    unchanged = {f.rule_id for f in second.findings if f.baseline_state == "unchanged"}
    assert "B404:blacklist" in unchanged and "AWSKeyDetector" in new
    assert not new & {f.rule_id for f in first.findings}
    assert [f.rule_id for f in second.fixed] == ["B602:subprocess_popen_with_shell_equals_true"]
    assert second.fixed_findings == 1
    assert second.new_findings == sum(f.baseline_state == "new" for f in second.findings)
    log = json.loads(Path(str(second.sarif)).read_text())
    states = {r["ruleId"]: r["baselineState"] for run in log["runs"] for r in run["results"]}
    assert states["B602:subprocess_popen_with_shell_equals_true"] == "absent"
    assert states["B404:blacklist"] == "unchanged" and states["AWSKeyDetector"] == "new"
    # another environment has no release yet: everything is new
    staging = await env.run(agent.scan, ScanInput(run_id="pipeline-second", project="shop", environment="staging"))
    assert staging.baseline_release is None and staging.new_findings == len(staging.findings)


async def test_record_release_needs_a_scan_of_its_run(workspaces: Workspaces) -> None:
    with pytest.raises(ApplicationError, match="no security scan"):
        await env.run(
            SecurityAgent(workspaces).record_release,
            RecordReleaseInput(run_id="pipeline-none", project="shop", environment="dev", release="r"),
        )


@needs_checkov
async def test_checkov_finds_a_deployment_running_as_root(workspaces: Workspaces) -> None:
    plant(workspaces, "pipeline-k8s", {"app.py": "X = 1\n"}, {"deployment.yaml": ROOT_DEPLOYMENT})
    report = await env.run(SecurityAgent(workspaces, checkov=str(CHECKOV)).scan, ScanInput(run_id="pipeline-k8s"))
    assert report.tools == ["bandit", "detect-secrets", "checkov"] and report.manifests == 1
    checks = {f.rule_id: f for f in report.findings if f.tool == "checkov"}
    assert checks["CKV_K8S_23"].severity == "HIGH"  # root containers
    assert checks["CKV_K8S_23"].file == "../manifests/deployment.yaml"
    assert "CKV_K8S_20" in checks  # skipped by the manifest's own annotation: reported all the same
    assert report.highs >= 2


async def test_manifests_without_checkov_fail_the_scan(workspaces: Workspaces) -> None:
    plant(workspaces, "pipeline-nockv", {"app.py": "X = 1\n"}, {"deployment.yaml": ROOT_DEPLOYMENT})
    with pytest.raises(ApplicationError, match="checkov is missing") as info:
        await env.run(SecurityAgent(workspaces, checkov=None).scan, ScanInput(run_id="pipeline-nockv"))
    assert info.value.non_retryable


async def test_a_module_named_like_the_scanner_cannot_stand_in_for_it(workspaces: Workspaces) -> None:
    fake = 'print(\'{"results": [], "errors": [], "metrics": {}}\')\n'
    plant(workspaces, "pipeline-fake", {"ops.py": SHELL, "bandit/__init__.py": "", "bandit/__main__.py": fake})
    report = await env.run(SecurityAgent(workspaces).scan, ScanInput(run_id="pipeline-fake"))
    assert any(f.rule_id.startswith("B602") for f in report.findings)


def test_old_reports_and_requests_still_decode() -> None:
    old = {
        "tools": ["bandit"],
        "scanned_files": 1,
        "criticals": 1,
        "findings": [
            {
                "tool": "bandit",
                "rule_id": "B602:x",
                "severity": "CRITICAL",
                "confidence": "HIGH",
                "file": "a.py",
                "line": 3,
                "message": "m",
            },
            {
                "tool": "bandit",
                "rule_id": "B404:y",
                "severity": "LOW",
                "confidence": "HIGH",
                "file": "a.py",
                "line": 1,
                "message": "m",
            },
        ],
    }
    report = ScanReport.model_validate(old)
    assert (report.criticals, report.highs, report.lows) == (1, 0, 1)
    assert report.at_or_above("CRITICAL") == 1 and report.at_or_above("LOW") == 2 and report.at_or_above("NEVER") == 0
    assert report.findings[0].fingerprint == "" and report.new_findings is None
    assert ScanInput(run_id="r").model_dump() == {"run_id": "r"}
    request = PipelineRequest(project="shop", prompt="a url shortener", requested_by="ann")
    assert "security_policy" not in request.model_dump()
    stricter = PipelineRequest(**request.model_dump(), security_policy={"gate_at": "high"})
    assert PipelineRequest.model_validate_json(stricter.model_dump_json()).security_policy.gate_at == "high"
    Finding.model_validate({**old["findings"][0], "fingerprint": "f", "baseline_state": "absent"})


def test_the_checkov_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(checkov_bin="/opt/checkov", _env_file=None).checkov_program() == "/opt/checkov"  # type: ignore[call-arg]
    monkeypatch.setenv("QUANTUM_CHECKOV_BIN", "/x/checkov")
    assert Settings(_env_file=None).checkov_program() == "/x/checkov"  # type: ignore[call-arg]
    monkeypatch.delenv("QUANTUM_CHECKOV_BIN")
    default = Settings(_env_file=None).checkov_program()  # type: ignore[call-arg]
    if CHECKOV.is_file():
        assert default == str(CHECKOV)


def test_findings_are_shown_as_text(tmp_path: Path) -> None:
    path = tmp_path / "security.sarif"
    result = {
        "ruleId": "[b]rule[/b]",
        "level": "error",
        "message": {"text": MARKUP},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": "[x].py"}, "region": {"startLine": 2}}}],
        "partialFingerprints": {"quantumFingerprint/v1": "ab" * 32},
        "properties": {"severity": "critical"},
        "baselineState": "new",
    }
    path.write_text(
        json.dumps({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "t"}}, "results": [result]}]})
    )
    out = rendered(findings_table(read_findings(path)))
    assert MARKUP in out and "[b]rule[/b]" in out and "[x].py:2" in out
