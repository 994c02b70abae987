"""Orchestration: deterministic workflow code only (the pipeline saga, code generation, infra provisioning).

Imports ``agents`` (to name activities) and ``events`` (inputs and signal payloads); nothing above.
"""

from workflows.codegen import CodeGenerationWorkflow
from workflows.infra import InfraProvisionWorkflow
from workflows.models import PIPELINE_STAGES, PipelineResult, RunStatusView
from workflows.pipeline import DevSecOpsPipelineWorkflow

WORKFLOWS = (DevSecOpsPipelineWorkflow, CodeGenerationWorkflow, InfraProvisionWorkflow)

__all__ = [
    "PIPELINE_STAGES",
    "WORKFLOWS",
    "CodeGenerationWorkflow",
    "DevSecOpsPipelineWorkflow",
    "InfraProvisionWorkflow",
    "PipelineResult",
    "RunStatusView",
]
