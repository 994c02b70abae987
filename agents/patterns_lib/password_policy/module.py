"""{{title}}: password strength checks that explain themselves.

Generated for the request: {{prompt}}

:func:`check` never stores or logs the candidate; its report holds only the reasons it failed (as sentences a user
can act on) and a strength label. Banned words are matched case-insensitively and through common substitutions
(``p@ssw0rd`` is ``password``).
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

CLASSES = {
    "lowercase": set(string.ascii_lowercase),
    "uppercase": set(string.ascii_uppercase),
    "digit": set(string.digits),
}
_SUBSTITUTIONS = str.maketrans("@4310$5!7", "aaeiossit")
_RUNS = (string.ascii_lowercase, string.digits, "qwertyuiop", "asdfghjkl", "zxcvbnm")


@dataclass(frozen=True)
class Policy:
    min_length: int = 12
    max_length: int = 128
    min_classes: int = 3
    max_repeat: int = 3
    max_sequence: int = 4
    banned_words: frozenset[str] = field(
        default_factory=lambda: frozenset({"password", "qwerty", "letmein", "welcome", "admin", "iloveyou", "dragon"})
    )


@dataclass(frozen=True)
class Report:
    problems: tuple[str, ...]
    strength: Literal["weak", "good", "strong"]

    @property
    def ok(self) -> bool:
        return not self.problems


def character_classes(candidate: str) -> set[str]:
    """Which of lowercase, uppercase, digit and symbol (anything else) occur in ``candidate``."""
    found = {name for name, chars in CLASSES.items() if any(c in chars for c in candidate)}
    if any(not any(c in chars for chars in CLASSES.values()) for c in candidate):
        found.add("symbol")
    return found


def longest_repeat(candidate: str) -> int:
    """The longest run of one character (``aaa`` is 3)."""
    best = run = 0
    for index, char in enumerate(candidate):
        run = run + 1 if index and char == candidate[index - 1] else 1
        best = max(best, run)
    return best


def longest_sequence(candidate: str) -> int:
    """The longest run of consecutive alphabet, digit or keyboard characters, either way (``abcd``, ``4321``)."""
    lowered, best = candidate.lower(), 1 if candidate else 0
    for row in _RUNS:
        for text in (row, row[::-1]):
            for start in range(len(lowered)):
                length = 1
                while start + length < len(lowered) and lowered[start : start + length + 1] in text:
                    length += 1
                best = max(best, length)
    return best


def check(candidate: str, policy: Policy | None = None, *, personal: Iterable[str] = ()) -> Report:
    """Check ``candidate`` against ``policy``; ``personal`` words (user name, e-mail) must not appear in it."""
    policy = policy or Policy()
    problems: list[str] = []
    if len(candidate) < policy.min_length:
        problems.append(f"use at least {policy.min_length} characters (this has {len(candidate)})")
    if len(candidate) > policy.max_length:
        problems.append(f"use at most {policy.max_length} characters")
    classes = character_classes(candidate)
    if len(classes) < policy.min_classes:
        absent = sorted({"lowercase", "uppercase", "digit", "symbol"} - classes)
        kinds = "lowercase, uppercase, digit, symbol"
        problems.append(f"mix at least {policy.min_classes} of {kinds} (add: {', '.join(absent)})")
    folded = candidate.lower().translate(_SUBSTITUTIONS)
    for word in sorted(policy.banned_words):
        if word.lower() in folded:
            problems.append(f"avoid common words such as {word!r}")
    for word in personal:
        if len(word) >= 3 and word.lower().translate(_SUBSTITUTIONS) in folded:
            problems.append("do not include your own name, user name or e-mail")
            break
    if longest_repeat(candidate) > policy.max_repeat:
        problems.append(f"do not repeat a character more than {policy.max_repeat} times in a row")
    if longest_sequence(candidate) > policy.max_sequence:
        problems.append(f"avoid sequences longer than {policy.max_sequence} such as 'abcde' or '12345'")
    if problems:
        return Report(tuple(problems), "weak")
    strong = len(candidate) >= policy.min_length + 4 and len(classes) == 4
    return Report((), "strong" if strong else "good")
