"""The offline pattern library, and how a request is matched to one of its patterns: precision first.

A pattern answers a request only when the request names the pattern's job (one of its *intents*, such as
"url shortener" or "token bucket"), asks for nothing the pattern lacks, names no code the pattern does not define,
and does not name another pattern's job as well. Anything else is refused, with the reason, what the library
knows and how to plug in a model: a refusal with a way forward is a correct answer, the wrong pattern with green
tests is not.

Words are compared by their Snowball stems, so "shortener", "shortened" and "shorten" meet. Each pattern's
``pattern.json`` lists its intents (phrases whose words must all appear in the request), its vocabulary (words
that describe what it does or where it is used) and what it lacks (features people ask for that it does not
have). The score is the share of the request's own words (generic words such as "write" or "python" aside) that
the pattern's vocabulary explains; it is reported with the runner-up, and breaks no rule on its own.
"""

from __future__ import annotations

import ast
import builtins
import json
import keyword
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import snowballstemmer

from agents.errors import NO_PATTERN_MATCH, failure

PATTERNS_DIR = Path(__file__).parent / "patterns_lib"
EVALUATION_FILE = PATTERNS_DIR / "evaluation.json"
MAX_UNKNOWN = 3
"""Words the chosen pattern cannot explain, beyond which the request asks for more than it does."""
MIN_SHARE_WITH_UNKNOWN = 0.4
"""With more than ``MAX_UNKNOWN`` unexplained words, the explained share below which the request is refused."""
LLM_HINT = (
    "To build anything else, plug in a model: set QUANTUM_LLM_BASE_URL to an OpenAI-compatible endpoint (a local "
    "Ollama at http://localhost:11434/v1, a vLLM server, or https://api.openai.com/v1) with QUANTUM_LLM_MODEL and, "
    "where the endpoint needs one, QUANTUM_LLM_API_KEY."
)

_STEMMER = snowballstemmer.stemmer("english")
_WORD = re.compile(r"[a-z0-9]+")
_JOINED = re.compile(r"[a-z0-9]+(?:[-_/.][a-z0-9]+)+")
_CODE_SPAN = re.compile(r"`([^`\n]{1,200})`")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_DEFINED = re.compile(r"\b(?:def|class)\s+([A-Za-z_][A-Za-z0-9_]*)")
_CALLED = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\(")


_KEPT = frozenset({"bitly", "tinyurl", "semver", "argparse", "pubsub", "hmac", "restful", "configurable"})
"""Words the stemmer would clip into other words ("bitly" into "bit", "restful" into "rest")."""


def stem(word: str) -> str:
    return word if word in _KEPT else str(_STEMMER.stemWord(word))


def stems(text: str) -> list[str]:
    """The Snowball stems of the words of ``text``, in order."""
    return [stem(word) for word in _WORD.findall(text.lower())]


def terms(text: str) -> set[str]:
    """Stems of the words, plus each hyphenated or adjacent pair joined ("rate-limit", "pub sub" -> "pubsub")."""
    lowered = text.lower()
    words = _WORD.findall(lowered)
    found = {stem(word) for word in words}
    found.update(stem(a + b) for a, b in zip(words, words[1:], strict=False))
    found.update(stem(re.sub(r"[-_/.]", "", joined)) for joined in _JOINED.findall(lowered))
    return found


def words(text: str) -> set[str]:
    """Lower-case words of ``text``, with a plural ``s`` dropped so 'services' meets 'service' (for embeddings)."""
    found = set()
    for word in _WORD.findall(text.lower()):
        found.add(word)
        if len(word) > 3 and word.endswith("s"):
            found.add(word[:-1])
    return found


GENERIC = frozenset(
    stems(
        """a an the this that these those it its i me my we us our you your they them their he she one some any
        all each every both either other another such same own only just also too very so then than there here
        is are was were be been being am do does did doing done have has had having can could should would will
        shall may might must need needs needed want wants wanted like please thanks hi hello hey
        write writes writing create creates build builds make makes implement implements implementation add
        give gives provide provides offer offers produce produces return returns returning take takes accept
        accepts support supports handle handles let lets allow allows able get gets got use uses using used
        python python3 py module modules function functions class classes method methods helper helpers utility
        utilities util utils library lib package code script snippet piece component thing something anything way
        simple small tiny little basic quick minimal lightweight light nice clean good proper robust reliable
        solid tested testable well pure plain standard stdlib builtin built dependency dependencies free
        and or not no nor but if else when whenever while where which who whom whose what how why with without
        within for to of in on at by from into onto over under about as per via off out up down around through
        again new given based kind sort type types style stuff etc e g eg ie i.e something someone
        project app application service please also able want would really actually should configurable
        customizable customisable option optional optionally"""
    )
)
"""Words that say nothing about which job a request asks for."""
ARTICLES = frozenset({"a", "an", "the"})
FUNCTION_WORDS = ARTICLES | frozenset(
    stems("of to for and or in on at by with from into as per its their our your my is are be that which it")
)

LACKING = frozenset(
    stems(
        """database sql sqlite postgres postgresql mysql mongodb mongo redis memcached kafka rabbitmq celery nats
        zeromq s3 aws gcp azure cloud docker kubernetes k8s helm terraform ansible async asyncio await coroutine
        thread threads threaded threadsafe multithreaded multiprocessing concurrent concurrency parallel
        distributed cluster replicated persistent persist persistence disk gui tkinter qt desktop mobile android
        ios react vue angular javascript typescript node nodejs rust golang go java kotlin csharp ruby php swift
        grpc graphql websocket websockets soap oauth oauth2 saml ldap sso jwt smtp email emails imap sms
        encrypt encryption decrypt aes rsa pgp machine learning neural model train training predict prediction
        llm ai chatbot scrape scraper crawl crawler selenium browser pdf excel xlsx docx image images video audio
        blockchain crypto bitcoin wallet payment stripe"""
    )
)
"""Capabilities that no pattern of the library provides: naming one the chosen pattern does not explain refuses."""


@dataclass(frozen=True)
class Pattern:
    """One vetted pattern: its code and its tests, with ``{{module}}``-style placeholders, and how it is matched."""

    name: str
    description: str
    keywords: tuple[str, ...]
    module_template: str
    tests_template: str
    intents: tuple[str, ...] = ()
    vocabulary: tuple[str, ...] = ()
    lacks: tuple[str, ...] = ()
    max_unknown: int | None = None
    """For a pattern that is a frame for other work (a service, a CLI), how many words it cannot explain a request
    may hold: what such a request names beyond the frame is the job it really asks for."""

    def render(self, template: str, *, module: str, project: str, prompt: str) -> str:
        title = project.replace("-", " ").replace("_", " ").title()
        safe_prompt = " ".join(prompt.split()).replace("\\", "/").replace('"""', "'''")
        text = template.replace("{{module}}", module).replace("{{project}}", project).replace("{{title}}", title)
        return text.replace("{{prompt}}", safe_prompt)

    @cached_property
    def summary(self) -> str:
        """The module's one-line summary (its docstring's first line, after the title)."""
        first = (ast.get_docstring(ast.parse(self.module_template)) or self.description).splitlines()[0]
        return first.split(":", 1)[-1].strip().rstrip(".")

    @cached_property
    def intent_terms(self) -> tuple[frozenset[str], ...]:
        """The words of each intent, function words ("per", "of") left out."""
        return tuple(frozenset(w for w in stems(intent) if w not in FUNCTION_WORDS) for intent in self.intents)

    @cached_property
    def core(self) -> frozenset[str]:
        """Words that name this pattern's job: its keywords and the words of its intents."""
        found = {stem(k) for k in self.keywords}
        for intent in self.intent_terms:
            found |= intent
        return frozenset(found)

    @cached_property
    def names(self) -> frozenset[str]:
        """Words that on their own name this pattern's job (its one-word intents: "csv", "semver", "retry")."""
        return frozenset(next(iter(t)) for t in self.intent_terms if len(t) == 1)

    @cached_property
    def explains(self) -> frozenset[str]:
        """Every word this pattern accounts for: its core, its description and its vocabulary."""
        return self.core | frozenset(stems(self.description)) | frozenset(stem(w) for w in self.vocabulary)

    @cached_property
    def lacking(self) -> frozenset[str]:
        """Single words for features this pattern does not have."""
        return frozenset(stem(w) for w in self.lacks if " " not in w) - self.explains

    @cached_property
    def lacking_phrases(self) -> tuple[tuple[str, ...], ...]:
        """Phrases for features it does not have ("to csv"), matched in order, articles aside."""
        return tuple(tuple(w for w in stems(p) if w not in ARTICLES) for p in self.lacks if " " in p)

    @cached_property
    def public_names(self) -> frozenset[str]:
        """Names the module defines for its users: top-level functions, classes and constants, and methods."""
        source = self.render(self.module_template, module="module", project="project", prompt="")
        names: set[str] = set()
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(
                    item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                )
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
        return frozenset(n for n in names if not n.startswith("_") or n.startswith("__"))

    def matched_intents(self, asked: Asked) -> list[str]:
        return [text for text, needed in zip(self.intents, self.intent_terms, strict=True) if asked.names(needed)]


@dataclass(frozen=True)
class Asked:
    """A request's words: those that say something (``content``), all of them in order, articles aside
    (``sequence``), without function words (``spoken``), and with word pairs joined (``joined``)."""

    content: tuple[str, ...]
    sequence: tuple[str, ...]
    spoken: tuple[str, ...]
    joined: frozenset[str]

    @classmethod
    def of(cls, prompt: str) -> Asked:
        every = stems(prompt)
        return cls(
            content=tuple(w for w in every if w not in GENERIC and not w.isdigit() and len(w) > 1),
            sequence=tuple(w for w in every if w not in ARTICLES),
            spoken=tuple(w for w in every if w not in FUNCTION_WORDS),
            joined=frozenset(terms(prompt)),
        )

    def says(self, phrase: tuple[str, ...]) -> bool:
        """Whether ``phrase`` occurs word for word, in order."""
        n = len(phrase)
        return n > 0 and any(self.sequence[i : i + n] == phrase for i in range(len(self.sequence) - n + 1))

    def names(self, phrase: frozenset[str]) -> bool:
        """Whether the request names ``phrase``: one word anywhere (or joined, "pub sub" for "pubsub"), more words
        close together (within a window one wider than the phrase, in any order)."""
        if not phrase:
            return False
        if len(phrase) == 1:
            return next(iter(phrase)) in self.joined
        width = len(phrase) + 1
        return any(phrase <= set(self.spoken[i : i + width]) for i in range(len(self.spoken)))


@dataclass(frozen=True)
class Candidate:
    """How well one pattern explains a request."""

    pattern: Pattern
    intents: tuple[str, ...]
    explained: tuple[str, ...]
    unexplained: tuple[str, ...]
    score: float
    similarity: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """The library's answer to a request: a pattern with its score and runner-up, or a refusal with its reason."""

    pattern: Pattern | None
    score: float
    reason: str
    runner_up: str | None = None
    runner_up_score: float = 0.0
    considered: tuple[Candidate, ...] = field(default=(), repr=False)

    @property
    def served(self) -> bool:
        return self.pattern is not None

    def summary(self) -> str:
        runner = f"; runner-up {self.runner_up} {self.runner_up_score:.2f}" if self.runner_up else ""
        if self.pattern is None:
            return f"refused: {self.reason}{runner}"
        return f"pattern {self.pattern.name} (score {self.score:.2f}; {self.reason}){runner}"


def requested_names(prompt: str, extra: Iterable[str] = ()) -> list[str]:
    """Code names the request asks for: a backtick span that is a name (`to_roman`, `Stack.push`) or defines one
    (`def to_roman(n)`), names called as ``name(``, and ``extra`` (what its acceptance examples call). Keywords
    and builtins are left out; a command line in backticks (`greet NAME --shout`) names nothing."""
    found: list[str] = []
    for span in _CODE_SPAN.findall(prompt):
        found += _DEFINED.findall(span)
        if _DOTTED.fullmatch(span.strip()):
            found.append(span.strip().split(".")[0])
    found += _CALLED.findall(prompt) + [name.split(".")[0] for name in extra]
    ignored = set(dir(builtins)) | {"self", "cls"}
    return [n for n in dict.fromkeys(found) if n not in ignored and not keyword.iskeyword(n)]


class PatternLibrary:
    """The shipped library of vetted patterns, loaded from ``root`` (one folder per pattern)."""

    def __init__(self, root: Path = PATTERNS_DIR) -> None:
        self.patterns: dict[str, Pattern] = {}
        for meta_path in sorted(root.glob("*/pattern.json")):
            meta = json.loads(meta_path.read_text())
            folder = meta_path.parent
            self.patterns[meta["name"]] = Pattern(
                name=meta["name"],
                description=meta["description"],
                keywords=tuple(meta["keywords"]),
                module_template=(folder / "module.py").read_text(),
                tests_template=(folder / "test_module.py").read_text(),
                intents=tuple(meta.get("intents", ())),
                vocabulary=tuple(meta.get("vocabulary", ())),
                lacks=tuple(meta.get("lacks", ())),
                max_unknown=meta.get("max_unknown"),
            )

    def get(self, name: str) -> Pattern:
        try:
            return self.patterns[name]
        except KeyError:
            raise failure(NO_PATTERN_MATCH, f"no pattern named {name!r}; known: {', '.join(self.patterns)}") from None

    def knows(self) -> str:
        """What the library can write: each pattern with its module's one-line summary."""
        return "; ".join(f"{p.name} ({p.summary})" for p in self.patterns.values())

    def candidates(self, prompt: str, similarity: Mapping[str, float] | None = None) -> list[Candidate]:
        """Every pattern, best first: those whose job the request names, then by score and similarity."""
        asked = Asked.of(prompt)
        content = list(dict.fromkeys(asked.content))
        found = []
        for pattern in self.patterns.values():
            explained = tuple(w for w in content if w in pattern.explains)
            unexplained = tuple(w for w in content if w not in pattern.explains)
            found.append(
                Candidate(
                    pattern=pattern,
                    intents=tuple(pattern.matched_intents(asked)),
                    explained=explained,
                    unexplained=unexplained,
                    score=round(len(explained) / len(content), 4) if content else 0.0,
                    similarity=(similarity or {}).get(pattern.name, 0.0),
                )
            )
        return sorted(found, key=lambda c: (not c.intents, -c.score, -c.similarity, c.pattern.name))

    def match(
        self, prompt: str, *, names: Iterable[str] = (), similarity: Mapping[str, float] | None = None
    ) -> Verdict:
        """The pattern that serves ``prompt``, or a refusal saying why (see the module's docstring)."""
        ranked = self.candidates(prompt, similarity)
        said = {stem(word): word for word in reversed(_WORD.findall(prompt.lower()))}

        def spoken(found: Iterable[str]) -> str:
            return ", ".join(said.get(w, w) for w in found)

        best, runner = ranked[0], ranked[1] if len(ranked) > 1 else None

        def verdict(pattern: Pattern | None, reason: str) -> Verdict:
            return Verdict(
                pattern=pattern,
                score=best.score,
                reason=reason,
                runner_up=runner.pattern.name if runner else None,
                runner_up_score=runner.score if runner else 0.0,
                considered=tuple(ranked),
            )

        if not best.intents:
            return Verdict(
                pattern=None,
                score=0.0,
                reason="the request names no job a pattern of the library does",
                runner_up=best.pattern.name if best.score else None,
                runner_up_score=best.score,
                considered=tuple(ranked),
            )
        name = best.pattern.name
        rivals = [
            c
            for c in ranked[1:]
            if any(len(i.split()) > 1 for i in c.intents)
            and not set(stems(" ".join(c.intents))) <= best.pattern.explains
        ]
        if rivals:
            other = rivals[0]
            return verdict(
                None,
                f"it asks for two jobs, {name} ({best.intents[0]!r}) and {other.pattern.name} "
                f"({other.intents[0]!r}); each pattern does one",
            )
        asked = Asked.of(prompt)
        lacking = [" ".join(p) for p in best.pattern.lacking_phrases if asked.says(p)]
        lacking += [said.get(w, w) for w in best.unexplained if w in LACKING or w in best.pattern.lacking]
        if lacking:
            return verdict(None, f"it asks for {', '.join(lacking)}, which {name} does not do")
        owners = {w: c.pattern.name for c in reversed(ranked[1:]) for w in best.unexplained if w in c.pattern.names}
        if owners:
            named = ", ".join(f"{said.get(w, w)} ({owner})" for w, owner in owners.items())
            return verdict(None, f"it also names {named}, which {name} does not do")
        unknown = list(best.unexplained)
        frame = best.pattern.max_unknown
        if frame is not None and len(unknown) > frame:
            return verdict(None, f"it asks for more than {name} does: {spoken(unknown)}")
        if len(unknown) > MAX_UNKNOWN and best.score < MIN_SHARE_WITH_UNKNOWN:
            return verdict(None, f"it asks for more than {name} does ({spoken(unknown)})")
        missing = [n for n in requested_names(prompt, names) if n not in best.pattern.public_names]
        if missing:
            defined = ", ".join(sorted(n for n in best.pattern.public_names if not n.startswith("__")))
            return verdict(None, f"it names {', '.join(missing)}, which {name} does not define (it defines {defined})")
        return verdict(
            best.pattern,
            f"the request names {best.intents[0]!r}; {len(best.explained)} of "
            f"{len(best.explained) + len(best.unexplained)} of its words explained",
        )

    def refusal(self, prompt: str, verdict: Verdict) -> str:
        """The message of a refusal: why, what the library knows, and how to plug in a model."""
        shown = " ".join(prompt.split())
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return (
            f"The offline pattern library cannot build {shown!r}: {verdict.reason}. "
            f"It knows {len(self.patterns)} patterns: {self.knows()}. {LLM_HINT}"
        )

    def best_match(self, prompt: str, *, names: Iterable[str] = ()) -> tuple[Pattern, Verdict]:
        """The pattern that serves ``prompt``; ``NoPatternMatch`` with the refusal otherwise."""
        verdict = self.match(prompt, names=names)
        if verdict.pattern is None:
            raise failure(NO_PATTERN_MATCH, self.refusal(prompt, verdict))
        return verdict.pattern, verdict
