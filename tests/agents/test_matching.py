"""The offline provider answers only what it can answer well: the shipped evaluation set, a held-out set, and the
rules that refuse (nothing named, two jobs, a capability the pattern lacks, code the pattern does not define)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.library import EVALUATION_FILE, LLM_HINT, PatternLibrary, requested_names, stems, terms

library = PatternLibrary()
HELD_OUT = Path(__file__).with_name("heldout_requests.json")


def load(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    data = json.loads(path.read_text())
    served = [(name, request) for name, requests in data["served"].items() for request in requests]
    return served, [entry["request"] for entry in data["refused"]]


SERVED, REFUSED = load(EVALUATION_FILE)


def test_the_evaluation_set_covers_every_pattern_six_times_and_forty_refusals() -> None:
    data = json.loads(EVALUATION_FILE.read_text())
    assert set(data["served"]) == set(library.patterns)
    assert min(len(requests) for requests in data["served"].values()) >= 6
    assert len(REFUSED) >= 40
    assert len({request for _, request in SERVED} | set(REFUSED)) == len(SERVED) + len(REFUSED)  # no repeats


@pytest.mark.parametrize(("expected", "request_text"), SERVED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SERVED)])
def test_every_paraphrase_gets_its_pattern(expected: str, request_text: str) -> None:
    verdict = library.match(request_text)
    assert verdict.pattern is not None and verdict.pattern.name == expected, verdict.summary()
    assert 0 < verdict.score <= 1 and verdict.runner_up != expected


@pytest.mark.parametrize("request_text", REFUSED, ids=[f"refused-{i}" for i in range(len(REFUSED))])
def test_every_request_no_pattern_serves_is_refused(request_text: str) -> None:
    verdict = library.match(request_text)
    assert verdict.pattern is None, verdict.summary()
    assert verdict.reason


def test_a_held_out_set_gets_no_wrong_pattern() -> None:
    """Requests written apart from the library and never tuned against: a refusal is allowed, a wrong pattern is
    not. The share served is printed for the record."""
    served, refused = load(HELD_OUT)
    wrong = [(want, r, v.summary()) for want, r in served if (v := library.match(r)).pattern and v.pattern.name != want]
    wrongly_served = [(r, v.summary()) for r in refused if (v := library.match(r)).pattern is not None]
    hits = sum(1 for want, r in served if (p := library.match(r).pattern) and p.name == want)
    kept = len(refused) - len(wrongly_served)
    print(f"held-out: {hits}/{len(served)} paraphrases served, {kept}/{len(refused)} refused")
    assert not wrong and not wrongly_served


def test_words_meet_by_their_stems_and_joined_pairs() -> None:
    assert set(stems("shortener shortened shorten")) == {"shorten"}
    assert {"ratelimit", "pubsub"} <= terms("a rate-limiter on pub sub")


def test_the_result_shows_its_score_and_runner_up() -> None:
    verdict = library.match("a URL shortener service")
    assert verdict.pattern is not None and verdict.pattern.name == "url_shortener"
    assert verdict.score == 1.0 and verdict.runner_up and verdict.runner_up != "url_shortener"
    assert "runner-up" in verdict.summary() and "url shortener" in verdict.reason


@pytest.mark.parametrize(
    ("request_text", "reason"),
    [
        ("validate IBAN bank account numbers", "names no job"),
        ("an LRU cache backed by Redis", "redis, which lru_cache does not do"),
        ("semantic version ranges like npm's caret", "ranges, npm, caret, which semver does not do"),
        ("a URL shortener with a REST API", "two jobs"),
        ("an HTTP client that retries failed requests", "http, client"),
        ("Write `make_slug(title)` that turns a title into a slug", "make_slug, which slugify does not define"),
        ("an HTTP service that converts currencies", "more than http_service does: converts, currencies"),
    ],
)
def test_each_refusal_says_why_in_the_requests_own_words(request_text: str, reason: str) -> None:
    verdict = library.match(request_text)
    assert verdict.pattern is None and reason in verdict.reason, verdict.reason


def test_the_refusal_says_what_the_library_knows_and_how_to_plug_in_a_model() -> None:
    verdict = library.match("a running median of a stream")
    message = library.refusal("a running median of a stream", verdict)
    assert "names no job" in message and LLM_HINT in message
    assert all(name in message for name in library.patterns)
    assert len(message) < 2000  # fits a run's bounded error


def test_names_the_acceptance_examples_call_must_be_defined_by_the_pattern() -> None:
    prompt = "slugify article titles into URL slugs"
    assert library.match(prompt, names=["slugify", "unique_slug"]).pattern is not None
    refused = library.match(prompt, names=["to_slug"])
    assert refused.pattern is None and "to_slug" in refused.reason


def test_requested_names_are_code_not_prose() -> None:
    text = "Write `def to_roman(n: int) -> str` and is_valid() helpers; use len(x), e.g. a cache (with ttl)"
    assert requested_names(text) == ["to_roman", "is_valid"]


def test_the_embedding_similarity_breaks_a_tie_between_equal_matches(tmp_path: Path) -> None:
    for name in ("alpha", "beta"):
        folder = tmp_path / name
        folder.mkdir()
        meta = {"name": name, "description": "Widgets.", "keywords": ["widget"], "intents": ["widget"]}
        (folder / "pattern.json").write_text(json.dumps(meta))
        (folder / "module.py").write_text('"""{{title}}: widgets."""\n\n\ndef widget() -> int:\n    return 1\n')
        (folder / "test_module.py").write_text("")
    twins = PatternLibrary(tmp_path)
    assert twins.match("a widget").pattern.name == "alpha"  # type: ignore[union-attr]  # by name, all else equal
    chosen = twins.match("a widget", similarity={"alpha": 0.2, "beta": 0.6})
    assert chosen.pattern is not None and chosen.pattern.name == "beta" and chosen.runner_up == "alpha"
