"""The layers of DESIGN.md: imports run downward only (quantum -> workflows -> agents, events)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
ALLOWED = {
    "quantum": {"quantum", "workflows", "agents", "events"},
    "workflows": {"workflows", "agents", "events"},
    "agents": {"agents"},
    "events": {"events"},
}


def our_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(ALLOWED)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_downward_only(package: str) -> None:
    files = [p for p in (ROOT / package).rglob("*.py") if "patterns_lib" not in p.parts]
    assert files
    wrong = {
        f"{p.relative_to(ROOT)} imports {sorted(our_imports(p) - ALLOWED[package])}"
        for p in files
        if our_imports(p) - ALLOWED[package]
    }
    assert not wrong, wrong


def test_the_contract_names_are_registered() -> None:
    from quantum.settings import TASK_QUEUE
    from workflows import WORKFLOWS
    from workflows.pipeline import DevSecOpsPipelineWorkflow

    names = {wf.__temporal_workflow_definition.name for wf in WORKFLOWS}  # type: ignore[attr-defined]
    assert names == {"DevSecOpsPipelineWorkflow", "CodeGenerationWorkflow", "InfraProvisionWorkflow"}
    assert TASK_QUEUE == "quantum-workflows"
    definition = DevSecOpsPipelineWorkflow.__temporal_workflow_definition  # type: ignore[attr-defined]
    assert "review" in definition.signals and "status" in definition.queries


def test_activity_names_are_unique_and_namespaced(tmp_path: Path) -> None:
    from quantum.settings import Settings
    from quantum.worker import activity_name, build_agents, check_unique

    agents = build_agents(Settings(data_dir=tmp_path, _env_file=None))  # type: ignore[call-arg]
    names = [activity_name(fn) for fn in agents.activities()]
    assert all("." in name for name in names)
    assert len(names) == len(set(names)) == 25  # 21 (events.publish_all among them), audit.* (3) and reviews.keys
    assert {"security.scan", "security.record_release", "audit.append", "reviews.keys"} <= set(names)
    with pytest.raises(ValueError, match="registered twice: codegen.generate_code"):
        check_unique([agents.codegen.generate_code, agents.codegen.generate_code])
