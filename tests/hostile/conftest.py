"""Hostile-input properties: the hypothesis profiles, and the model harness of the workflow tests.

``dev`` (the default) keeps the whole directory fast on a shared machine; ``HYPOTHESIS_PROFILE=ci`` runs ten
times the examples. No deadline in either: timing on a shared machine says nothing about the code. Failing
examples are kept under ``.pytest_cache`` (ignored by git) and tried first on the next run.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.workflows.conftest import model

__all__ = ["model"]

_COMMON = settings(
    deadline=None,
    database=DirectoryBasedExampleDatabase(Path(__file__).resolve().parents[2] / ".pytest_cache" / "hypothesis"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

settings.register_profile("dev", _COMMON, max_examples=60)
settings.register_profile("ci", _COMMON, max_examples=600)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
