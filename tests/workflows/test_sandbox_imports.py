"""Temporal's sandbox imports a workflow's module afresh for every run; the rest of the workflow code is passed
through, so a run pays only for its own module (``quantum bench saga`` measured a run re-importing all three
workflow modules and their patches and presets: the most of its worker CPU above the baseline's)."""

from __future__ import annotations

import importlib._bootstrap_external as bootstrap
from collections import Counter
from typing import Any

import pytest

from .conftest import Harness


async def test_a_run_imports_afresh_only_its_own_workflow_module(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: Counter[str] = Counter()
    get_code = bootstrap.SourceFileLoader.get_code

    def counting(self: Any, fullname: str) -> Any:
        loaded[fullname] += 1
        return get_code(self, fullname)

    request = {"project": "slugs", "prompt": "a slugify helper", "requested_by": "alice"}
    async with harness.worker():
        await (await harness.start("CodeGenerationWorkflow", request, prefix="codegen")).result()
        monkeypatch.setattr(bootstrap.SourceFileLoader, "get_code", counting)
        for _ in range(2):
            await (await harness.start("CodeGenerationWorkflow", request, prefix="codegen")).result()
    ours = {name: count for name, count in loaded.items() if name.split(".")[0] in {"workflows", "agents", "events"}}
    assert ours == {"workflows": 2, "workflows.codegen": 2}
