"""QAgent: code generation from the offline pattern library, written into the run's workspace.

The offline pattern provider is a real, documented mode, not a model: it picks the closest entry of a shipped
library of vetted patterns (each with its own tests), adapts names from the request, and says in every result
that it came from ``offline-patterns``.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from pydantic import BaseModel, Field
from temporalio import activity

from agents import provenance
from agents.errors import INVALID_REQUEST, NO_PATTERN_MATCH, UNSAFE_ARTIFACT, failure
from agents.library import Pattern, PatternLibrary, Verdict, words
from agents.models import (
    CleanupResult,
    CodeValidation,
    Fingerprint,
    GenerateCodeInput,
    GeneratedCode,
    ModelUsage,
    Remembered,
    RememberInput,
    RunRef,
)
from agents.workspace import (
    UntrustedFile,
    Workspaces,
    file_record,
    files_under,
    read_untrusted,
    relative_path_problem,
    remove_tree,
    safe_join,
    sha256_file,
)

if TYPE_CHECKING:
    from agents.llm import LLMGateway
    from agents.patterns import PatternStore

CODE_SYSTEM_PROMPT = (
    "You are QAgent, writing small, correct and secure Python modules for a DevSecOps pipeline. "
    "No network access, no subprocess or shell, no eval, no secrets in code. Reply with JSON only."
)
OFFLINE_PROVIDER = "offline-patterns"
TOP_K = 3
MAX_PREVIOUS_BYTES = 32 * 1024
MAX_REMEMBERED_PROMPT_CHARS = 500
MAX_REMEMBERED_KEYWORDS = 20

GENERATIONS = Counter(
    "quantum_agent_code_generations_total", "Code generations by provider and pattern", ["provider", "pattern"]
)
ATTEMPTS = Counter(
    "quantum_agent_code_attempts_total",
    "Code written, by provider and attempt of the repair loop",
    ["provider", "attempt"],
)
MAX_ATTEMPT_LABEL = 10

MODEL_PROVIDER = "openai-compatible"


class FileReply(BaseModel):
    path: str = Field(description="Relative path of a Python file, e.g. billing.py")
    content: str


class FilesReply(BaseModel):
    """What a model is asked to return: the files it wrote."""

    files: list[FileReply] = Field(min_length=1)
    summary: str = ""


@dataclass(frozen=True)
class Draft:
    """Files to write (relative path -> content) and who wrote them."""

    files: dict[str, str]
    provider: str
    model: str | None
    notes: list[str]
    usage: ModelUsage = field(default_factory=ModelUsage)


def checked_files(reply: FilesReply, *, suffix: str = ".py") -> dict[str, str]:
    """The reply's files, refusing unsafe paths (see :func:`relative_path_problem`) and anything but ``suffix``."""
    files: dict[str, str] = {}
    for item in reply.files:
        rel = item.path.strip()
        problem = relative_path_problem(rel) or (None if rel.endswith(suffix) else f"does not end in {suffix}")
        if problem:
            raise failure(UNSAFE_ARTIFACT, f"the model named a file {rel[:200]!r} that {problem}")
        files[rel] = item.content
    return files


def module_name(project: str) -> str:
    """An importable module name for ``project`` that shadows nothing in the standard library."""
    name = re.sub(r"[^a-z0-9_]", "_", project.lower())
    if not name or not name[0].isalpha():
        raise failure(INVALID_REQUEST, f"project {project!r} gives no module name")
    if name in sys.stdlib_module_names or name in {"test", "tests", "conftest", "pytest"}:
        name += "_app"
    return name


class CodegenAgent:
    """QAgent: writes code for a request into the run's workspace, checks it and fingerprints it."""

    def __init__(
        self,
        workspaces: Workspaces,
        patterns: PatternLibrary,
        store: PatternStore | None = None,
        llm: LLMGateway | None = None,
    ) -> None:
        self.workspaces = workspaces
        self.patterns = patterns
        self.store = store
        self.llm = llm

    async def choose(self, inp: GenerateCodeInput) -> tuple[list[tuple[Pattern, float]], Verdict | None, list[str]]:
        """The patterns for a request, best first, the offline verdict, and notes on how they were chosen.

        Offline, the library's precision-first match decides (the store's similarity only breaks ties), and a
        request it cannot serve is refused with the reason and a way forward. A model gets the closest patterns
        from the store (top-k) as references, or the library's best candidates without a store.
        """
        if self.llm is None:
            similarity = {}
            if self.store is not None:
                similarity = {
                    m.name: m.score for m in await self.store.search(inp.prompt, k=len(self.patterns.patterns))
                }
            verdict = self.patterns.match(inp.prompt, names=inp.required_names, similarity=similarity)
            if verdict.pattern is None:
                raise failure(NO_PATTERN_MATCH, self.patterns.refusal(inp.prompt, verdict))
            return [(verdict.pattern, verdict.score)], verdict, [f"Chosen: {verdict.summary()}."]
        if self.store is None:
            ranked = self.patterns.candidates(inp.prompt)[:TOP_K]
            listed = ", ".join(f"{c.pattern.name} {c.score:.2f}" for c in ranked)
            return [(c.pattern, c.score) for c in ranked], None, [f"closest patterns in the library: {listed}"]
        matches = await self.store.search(inp.prompt, k=TOP_K)
        if not matches:
            raise failure(NO_PATTERN_MATCH, "the pattern store is empty")
        listed = ", ".join(f"{m.name} {m.score:.2f}" for m in matches)
        return [(m.pattern, m.score) for m in matches], None, [f"closest patterns in the store: {listed}"]

    @activity.defn(name="codegen.generate_code")
    async def generate_code(self, inp: GenerateCodeInput) -> GeneratedCode:
        """Generate the request's code from the closest pattern, then lay the request's source files over it."""
        if inp.language != "python":
            raise failure(INVALID_REQUEST, f"language {inp.language!r} is not supported; use python")
        closest, verdict, context = await self.choose(inp)
        pattern, score = closest[0]
        module = module_name(inp.project)
        if self.llm is None:
            code = pattern.render(pattern.module_template, module=module, project=inp.project, prompt=inp.prompt)
            draft = Draft(
                files={f"{module}.py": code},
                provider=OFFLINE_PROVIDER,
                model=None,
                notes=[
                    f"Code from the offline pattern library (pattern '{pattern.name}', score {score:.2f}); "
                    "no language model was used.",
                    *context,
                ],
            )
        else:
            draft = await self._ask_model(inp, module, [p for p, _ in closest], context)
        return await asyncio.to_thread(self._write, inp, pattern, score, verdict, module, draft)

    async def _ask_model(
        self, inp: GenerateCodeInput, module: str, references: list[Pattern], context: list[str]
    ) -> Draft:
        """Ask the model for the module; on a repair attempt, with the code it wrote before and why it failed."""
        assert self.llm is not None
        examples = "\n\n".join(
            f"Pattern '{p.name}' ({p.description}):\n```python\n"
            f"{p.render(p.module_template, module=module, project=inp.project, prompt=inp.prompt)[:4000]}\n```"
            for p in references
        )
        user = (
            f"Request: {inp.prompt}\n\nWrite the module `{module}.py` (Python 3.11, standard library only). "
            f"Put it in a file named exactly `{module}.py`; more files only if needed, relative .py paths.\n\n"
        )
        if inp.specification:
            user += f"The request's acceptance checks, which the module must pass:\n{inp.specification}\n\n"
        if inp.feedback:
            before = await asyncio.to_thread(self._previous, inp.run_id, module)
            user += (
                f"This is attempt {inp.attempt}. The previous attempt failed:\n{inp.feedback}\n\n"
                + (f"The code it wrote:\n```python\n{before}\n```\n\n" if before else "")
                + "Fix the module so that it does what the request asks; reply with the whole module.\n\n"
            )
        user += f"Vetted patterns close to the request, closest first, for reference:\n\n{examples}"
        pattern = references[0]
        completion = await self.llm.complete_json(
            system=CODE_SYSTEM_PROMPT, user=user, schema=FilesReply, max_tokens=inp.max_tokens
        )
        files = checked_files(completion.value)
        if f"{module}.py" not in files:
            raise failure(INVALID_REQUEST, f"the model wrote {sorted(files)} but not {module}.py")
        return Draft(
            files=files,
            provider=MODEL_PROVIDER,
            model=completion.model,
            notes=[
                f"Code from model {completion.model}, attempt {inp.attempt} ({completion.prompt_tokens} prompt and "
                f"{completion.completion_tokens} completion tokens, {completion.latency_seconds:.2f} s"
                f"{', repaired once' if completion.repaired else ''}); pattern '{pattern.name}' given as reference.",
                *context,
            ],
            usage=ModelUsage(
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                cost=completion.cost,
            ),
        )

    def _previous(self, run_id: str, module: str) -> str:
        """The module the previous attempt wrote (bounded), or nothing."""
        try:
            return read_untrusted(self.workspaces.src(run_id), f"{module}.py", max_bytes=MAX_PREVIOUS_BYTES).decode(
                errors="replace"
            )
        except UntrustedFile:
            return ""

    def _write(
        self,
        inp: GenerateCodeInput,
        pattern: Pattern,
        score: float,
        verdict: Verdict | None,
        module: str,
        draft: Draft,
    ) -> GeneratedCode:
        self.workspaces.claim(inp.run_id)
        src = self.workspaces.src(inp.run_id)
        remove_tree(src)  # a retry starts from a clean directory: same input, same files
        src.mkdir(parents=True)
        written: list[Path] = []
        notes = list(draft.notes)
        for rel, content in sorted({**draft.files, **inp.source}.items()):
            target = safe_join(src, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            if target not in written:
                written.append(target)
        if inp.source:
            notes.append(f"{len(inp.source)} source file(s) from the request were written as given.")
        GENERATIONS.labels(draft.provider, pattern.name).inc()
        ATTEMPTS.labels(draft.provider, str(min(inp.attempt, MAX_ATTEMPT_LABEL))).inc()
        activity.logger.info("generated %s from pattern %s", module, pattern.name)
        records = [file_record(p, src) for p in sorted(written)]
        parents = {f"pattern:{pattern.name}/module.py": provenance.sha256_text(pattern.module_template)}
        parents.update({f"source:{rel}": provenance.sha256_text(content) for rel, content in inp.source.items()})
        statement = provenance.statement(
            subjects={f"src/{r.path}": r.sha256 for r in records},
            agent="QAgent",
            provider=draft.provider,
            model=draft.model,
            prompt=inp.prompt,
            project=inp.project,
            run_id=inp.run_id,
            parents=parents,
            pattern=pattern.name,
            attempt=inp.attempt,
            tokens=(draft.usage.prompt_tokens, draft.usage.completion_tokens),
        )
        statement_path = provenance.write(self.workspaces.for_run(inp.run_id), statement)
        return GeneratedCode(
            run_id=inp.run_id,
            workspace=str(self.workspaces.for_run(inp.run_id)),
            module=module,
            files=records,
            provider=draft.provider,
            model=draft.model,
            pattern=pattern.name,
            pattern_score=score,
            runner_up=verdict.runner_up if verdict else None,
            runner_up_score=verdict.runner_up_score if verdict else 0.0,
            notes=notes,
            provenance=str(statement_path),
            prompt_sha256=provenance.sha256_text(inp.prompt),
            usage=draft.usage,
            attempt=inp.attempt,
        )

    @activity.defn(name="codegen.validate_code")
    async def validate_code(self, ref: RunRef) -> CodeValidation:
        """Every file under ``src`` is a regular Python file inside the workspace that parses."""
        return await asyncio.to_thread(self._validate, ref)

    def _validate(self, ref: RunRef) -> CodeValidation:
        src = self.workspaces.src(ref.run_id)
        errors: list[str] = []
        checked = 0
        if not src.is_dir():
            return CodeValidation(ok=False, files_checked=0, errors=["no generated code in the workspace"])
        base = src.resolve()
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if path.is_symlink() or not path.resolve().is_relative_to(base):
                errors.append(f"{rel}: links outside the workspace")
            elif path.is_file():
                if path.suffix != ".py":
                    errors.append(f"{rel}: only .py files are allowed")
                    continue
                checked += 1
                try:
                    ast.parse(path.read_text(), filename=rel)
                except SyntaxError as err:
                    errors.append(f"{rel}:{err.lineno}: {err.msg}")
        if checked == 0 and not errors:
            errors.append("no Python files were generated")
        return CodeValidation(ok=not errors, files_checked=checked, errors=errors)

    @activity.defn(name="codegen.fingerprint_code")
    async def fingerprint_code(self, ref: RunRef) -> Fingerprint:
        """sha256 of every file, and one digest over the sorted (path, sha256) pairs."""
        src = self.workspaces.src(ref.run_id)
        files = {p.relative_to(src).as_posix(): sha256_file(p) for p in files_under(src)}
        if not files:
            raise failure(INVALID_REQUEST, f"nothing to fingerprint for {ref.run_id}")
        digest = hashlib.sha256("\n".join(f"{path}\t{sha}" for path, sha in sorted(files.items())).encode())
        return Fingerprint(digest=digest.hexdigest(), files=files)

    @activity.defn(name="codegen.cleanup_code")
    async def cleanup_code(self, ref: RunRef) -> CleanupResult:
        """Remove the run's generated code and its provenance (compensation); nothing to remove is fine.

        Only a workspace whose owner file names this run is touched: a compensation undoes its own run's work only.
        """
        if not self.workspaces.for_run(ref.run_id).exists():
            return CleanupResult(removed=[])
        if not self.workspaces.owned_by(ref.run_id):
            raise failure(UNSAFE_ARTIFACT, f"the workspace of {ref.run_id} is not this run's: nothing removed")
        statement = self.workspaces.for_run(ref.run_id) / provenance.FILE_NAME
        removed = remove_dir(self.workspaces.src(ref.run_id))
        if statement.exists():
            statement.unlink()
            removed.removed.append(str(statement))
        return removed

    @activity.defn(name="codegen.remember_generation")
    async def remember_generation(self, inp: RememberInput) -> Remembered:
        """Keep a model's successful module and tests in the pattern store, so that later requests close to this
        one get them as context. Named after the run, so doing it again changes nothing."""
        if self.store is None:
            return Remembered(reason="no pattern store is configured")
        code, tests = await asyncio.to_thread(self._generation, inp)
        if not code:
            return Remembered(reason=f"{inp.module}.py is not in the workspace")
        name = "generated-" + hashlib.sha256(inp.run_id.encode()).hexdigest()[:24]
        learned = Pattern(
            name=name,
            description=" ".join(inp.prompt.split())[:MAX_REMEMBERED_PROMPT_CHARS],
            keywords=tuple(sorted(words(inp.prompt)))[:MAX_REMEMBERED_KEYWORDS],
            module_template=code,
            tests_template=tests,
        )
        await self.store.add([learned], origin="generated")
        return Remembered(name=name)

    def _generation(self, inp: RememberInput) -> tuple[str, str]:
        root = self.workspaces.for_run(inp.run_id)
        try:
            code = read_untrusted(root, f"src/{inp.module}.py", max_bytes=MAX_PREVIOUS_BYTES)
        except UntrustedFile:
            return "", ""
        tests = []
        for path in files_under(root / "tests"):
            try:
                rel = path.relative_to(root).as_posix()
                tests.append(read_untrusted(root, rel, max_bytes=MAX_PREVIOUS_BYTES).decode(errors="replace"))
            except UntrustedFile:
                continue
        return code.decode(errors="replace"), "\n\n".join(tests)[:MAX_PREVIOUS_BYTES]

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.generate_code,
            self.validate_code,
            self.fingerprint_code,
            self.cleanup_code,
            self.remember_generation,
        ]


def remove_dir(path: Path) -> CleanupResult:
    """Remove ``path`` and everything in it, saying what went; a missing directory is not an error."""
    if not path.exists():
        return CleanupResult(removed=[])
    removed = [p.as_posix() for p in files_under(path, "*")]
    remove_tree(path)
    return CleanupResult(removed=removed)
