"""Provenance of generated artifacts as an in-toto Statement (v1) with a SLSA provenance (v1) predicate.

Every file the run generated is a ``subject`` with its sha256; the predicate says who generated it (the agent, the
provider and the model), from what (the hash of the prompt, never the prompt's secrets or the model's key; the
pattern and the source files it started from, with their digests), when, and in which run.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/quantum-suite/quantum/codegen/v1"
FILE_NAME = "provenance.intoto.json"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def statement(
    *,
    subjects: dict[str, str],
    agent: str,
    provider: str,
    model: str | None,
    prompt: str,
    project: str,
    run_id: str,
    parents: dict[str, str],
    pattern: str | None,
    attempt: int = 1,
    tokens: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """The in-toto Statement for ``subjects`` (path -> sha256) made from ``parents`` (name -> sha256)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in sorted(subjects.items())],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"project": project, "prompt_sha256": sha256_text(prompt)},
                "internalParameters": {
                    "provider": provider,
                    "model": model,
                    "pattern": pattern,
                    "attempt": attempt,
                    "promptTokens": tokens[0],
                    "completionTokens": tokens[1],
                },
                "resolvedDependencies": [
                    {"name": name, "digest": {"sha256": digest}} for name, digest in sorted(parents.items())
                ],
            },
            "runDetails": {
                "builder": {"id": f"quantum-suite/{agent}"},
                "metadata": {"invocationId": run_id, "startedOn": datetime.now(UTC).isoformat()},
            },
        },
    }


def write(directory: Path, document: dict[str, Any]) -> Path:
    path = directory / FILE_NAME
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def verify(path: Path, base: Path) -> list[str]:
    """Problems with the statement at ``path``: subjects that are missing or whose content changed."""
    document = json.loads(path.read_text())
    problems = []
    for subject in document.get("subject", []):
        target = base / subject["name"]
        if not target.is_file():
            problems.append(f"{subject['name']}: missing")
        elif hashlib.sha256(target.read_bytes()).hexdigest() != subject["digest"]["sha256"]:
            problems.append(f"{subject['name']}: changed since it was generated")
    return problems
