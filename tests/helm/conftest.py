"""The chart rendered once per session with its defaults and with the production values."""

from __future__ import annotations

import pytest

from tests.helm.support import Manifest, production_values, render


@pytest.fixture(scope="session")
def default_objects() -> list[Manifest]:
    return render()


@pytest.fixture(scope="session")
def production_objects() -> list[Manifest]:
    return render(production_values())
