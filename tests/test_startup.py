"""What a process of the product loads as it starts: the command line and the bridge go without the openai SDK and
qdrant-client (about 110 MB resident and over a second of start-up between them); the worker loads them when it
builds the agents that use them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("openai", "qdrant_client")


def loaded_after(code: str, tmp_path: Path) -> list[str]:
    """Which of :data:`HEAVY` a fresh interpreter holds after running ``code``."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")} | {"QUANTUM_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - a list of names this test printed


def test_the_command_line_and_the_bridge_load_neither_the_model_sdk_nor_the_vector_store(tmp_path: Path) -> None:
    assert loaded_after("import quantum.cli, quantum.app", tmp_path) == []


def test_the_worker_loads_them_when_it_builds_its_agents(tmp_path: Path) -> None:
    code = (
        "from quantum.settings import Settings\nfrom quantum.worker import build_agents\n"
        "build_agents(Settings(_env_file=None, llm_model='m', llm_base_url='http://127.0.0.1:9/v1'))"
    )
    assert loaded_after(code, tmp_path) == ["openai", "qdrant_client"]
