"""The image's Dockerfile, read rather than built: multi-stage, non-root, nothing secret, the sandbox installed."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

from tests.helm.support import ROOT

SECRETISH = re.compile(r"KEY|TOKEN|PASSWORD|SECRET", re.IGNORECASE)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    parsed = []
    for text in logical:
        keyword, _, args = text.strip().partition(" ")
        parsed.append((keyword.upper(), args.strip()))
    return parsed


def stages() -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and each stage, with ``${ARG}`` in FROM resolved."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(base, name))
        elif found:
            found[-1].instructions.append((keyword, rest))
        elif keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
    return args, found


def env_pairs(stage: Stage) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for args in stage.all("ENV"):
        pairs.update(dict(re.findall(r"(\w+)=(\S*)", args)))
    return pairs


def test_a_builder_stage_and_a_slim_runtime_stage() -> None:
    _, found = stages()
    assert len(found) >= 2
    runtime = found[-1]
    assert runtime.base == "python:3.11-slim"
    builders = {stage.name for stage in found[:-1]}
    copied = {source for args in runtime.all("COPY") for source in re.findall(r"--from=(\S+)", args)}
    assert copied and copied <= builders
    assert not any(args for args in runtime.all("RUN") if "pip install" in args), "installs belong to the builder"


def test_the_runtime_runs_as_a_numeric_non_root_user() -> None:
    runtime = stages()[1][-1]
    users = runtime.all("USER")
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0
    assert uid == "10001"  # the chart's runAsUser


def test_it_runs_the_worker_by_default_and_exposes_the_metrics_port() -> None:
    runtime = stages()[1][-1]
    assert runtime.all("ENTRYPOINT") == ['["quantum"]']
    assert runtime.all("CMD") == ['["worker"]']
    assert runtime.all("EXPOSE") == ["9464"]
    assert env_pairs(runtime)["PYTHONDONTWRITEBYTECODE"] == "1"
    [check] = runtime.all("HEALTHCHECK")
    assert "/metrics" in check


def test_the_sandbox_is_installed_in_the_runtime() -> None:
    runtime = stages()[1][-1]
    assert any("apt-get install" in args and re.search(r"\bbubblewrap\b", args) for args in runtime.all("RUN"))


def test_nothing_secret_is_baked_and_nothing_is_fetched_by_add() -> None:
    args, found = stages()
    assert all(not re.match(r"(--\S+\s+)*https?://", add) for stage in found for add in stage.all("ADD"))
    declared = dict(args)
    for stage in found:
        declared.update(env_pairs(stage))
        declared.update(dict(a.partition("=")[::2] for a in stage.all("ARG")))
    baked = {name: value for name, value in declared.items() if SECRETISH.search(name) and value}
    assert baked == {}


def test_every_package_of_the_project_is_copied_into_the_build() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    builder = stages()[1][0]
    copied = {source for args in builder.all("COPY") if "--from" not in args for source in args.split()[:-1]}
    assert packages | {"pyproject.toml", "README.md"} <= copied


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv*", ".quantum", ".env", "**/__pycache__", ".pytest_cache", "tests"} <= ignored
