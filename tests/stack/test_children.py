"""Every process the stack starts, the short ``temporal operator`` calls included, starts with a clean environment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from quantum.settings import Settings
from quantum.stack import EmbeddedStack
from tests.conftest import free_port

REAL_BIN = Path(sys.executable).parent
CANARY = "sk-canary-stack-children-41c7"


def recording_binaries(where: Path, dumps: Path) -> Path:
    """A directory with a ``temporal`` that writes its arguments and environment to ``dumps``, then runs the real one.

    Returns:
        An interpreter path in that directory, for ``sys.executable`` (the stack looks for binaries beside it).
    """
    where.mkdir()
    dumps.mkdir()
    wrapper = where / "temporal"
    wrapper.write_text(
        f'#!/bin/sh\n{{ printf "%s\\n" "$*"; env; }} > "{dumps}/$$.txt"\nexec "{REAL_BIN / "temporal"}" "$@"\n'
    )
    wrapper.chmod(0o755)
    (where / "nats-server").symlink_to(REAL_BIN / "nats-server")
    return where / "python"


@pytest.mark.timeout(120)
async def test_no_secret_reaches_the_temporal_server_or_its_operator_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dumps = tmp_path / "dumps"
    monkeypatch.setattr(sys, "executable", str(recording_binaries(tmp_path / "bin", dumps)))
    monkeypatch.setenv("QUANTUM_LLM_API_KEY", CANARY)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.invalid:1")  # the CLI's own variables do not steer it either
    settings = Settings(
        data_dir=tmp_path / "data",
        temporal_address=f"127.0.0.1:{free_port()}",
        temporal_ui_port=free_port(),
        nats_url=f"nats://127.0.0.1:{free_port()}",
        prometheus_port=free_port(),
        _env_file=None,
    )
    async with EmbeddedStack(settings) as stack:
        assert stack.started[:2] == ["temporal", "nats"]
    calls = [path.read_text() for path in sorted(dumps.iterdir())]
    assert any(call.startswith("server start-dev") for call in calls), calls
    assert any(call.startswith("operator namespace describe") for call in calls), calls
    for call in calls:
        assert CANARY not in call, call
        assert "TEMPORAL_ADDRESS=" not in call, call
