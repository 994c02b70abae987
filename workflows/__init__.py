"""Orchestration: deterministic workflow code only (the pipeline saga, code generation, infra provisioning).

Imports ``agents`` (to name activities) and ``events`` (inputs and signal payloads); nothing above.

The names below load on first use: Temporal's sandbox imports a workflow's module afresh for every run, and with it
this package, so a run of one workflow does not pay for importing the other two.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workflows.codegen import CodeGenerationWorkflow
    from workflows.infra import InfraProvisionWorkflow
    from workflows.models import PIPELINE_STAGES, PipelineResult, RunStatusView
    from workflows.pipeline import DevSecOpsPipelineWorkflow

    WORKFLOWS: tuple[type, ...]

_WHERE = {
    "CodeGenerationWorkflow": "workflows.codegen",
    "InfraProvisionWorkflow": "workflows.infra",
    "DevSecOpsPipelineWorkflow": "workflows.pipeline",
    "PIPELINE_STAGES": "workflows.models",
    "PipelineResult": "workflows.models",
    "RunStatusView": "workflows.models",
}

__all__ = [
    "PIPELINE_STAGES",
    "WORKFLOWS",
    "CodeGenerationWorkflow",
    "DevSecOpsPipelineWorkflow",
    "InfraProvisionWorkflow",
    "PipelineResult",
    "RunStatusView",
]


def __getattr__(name: str) -> Any:
    if name == "WORKFLOWS":
        return tuple(
            __getattr__(n) for n in ("DevSecOpsPipelineWorkflow", "CodeGenerationWorkflow", "InfraProvisionWorkflow")
        )
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'workflows' has no attribute {name!r}")
