"""{{title}}: short base62 codes for URLs.

Generated for the request: {{prompt}}

Codes come from a SHA-256 of the normalised URL, so the same URL always gets the same code; when a code is taken by
another URL a salt is added until a free one is found. Only absolute http(s) URLs without credentials are accepted.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALIAS = re.compile(r"^[0-9A-Za-z_-]{3,32}$")


def encode_base62(number: int) -> str:
    if number < 0:
        raise ValueError("only non-negative numbers can be encoded")
    digits = []
    while True:
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
        if number == 0:
            return "".join(reversed(digits))


def decode_base62(code: str) -> int:
    if not code:
        raise ValueError("empty code")
    number = 0
    for char in code:
        index = ALPHABET.find(char)
        if index < 0:
            raise ValueError(f"not a base62 character: {char!r}")
        number = number * 62 + index
    return number


def normalize_url(url: str, *, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """``url`` with scheme and host lower-cased and an empty path made ``/``; ValueError if it is not acceptable."""
    if not url or any(char.isspace() for char in url):
        raise ValueError("a URL must be non-empty and contain no whitespace")
    parts = urlsplit(url)
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"scheme must be one of {', '.join(schemes)}")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("URLs with credentials are not accepted")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the URL has an invalid port") from None
    netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, parts.fragment))


def _sha256_number(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "big")


class Shortener:
    """An in-memory table of code -> URL; ``digest`` is injectable to test collisions."""

    def __init__(self, *, length: int = 7, max_tries: int = 100, digest: Callable[[str], int] = _sha256_number) -> None:
        if length < 4:
            raise ValueError("codes shorter than 4 characters collide too often")
        self.length = length
        self.max_tries = max_tries
        self._digest = digest
        self._urls: dict[str, str] = {}
        self._codes: dict[str, str] = {}

    def shorten(self, url: str, *, alias: str | None = None) -> str:
        """The code for ``url`` (the existing one if already shortened), or the custom ``alias``."""
        target = normalize_url(url)
        if alias is not None:
            if not _ALIAS.match(alias):
                raise ValueError("an alias is 3-32 letters, digits, '-' or '_'")
            if self._urls.get(alias, target) != target:
                raise ValueError(f"alias {alias!r} is already taken")
            self._urls[alias] = target
            self._codes.setdefault(target, alias)
            return alias
        if target in self._codes:
            return self._codes[target]
        for salt in range(self.max_tries):
            code = encode_base62(self._digest(f"{target}#{salt}" if salt else target)).rjust(self.length, "0")
            code = code[: self.length]
            if code not in self._urls:
                self._urls[code] = target
                self._codes[target] = code
                return code
        raise RuntimeError(f"no free code after {self.max_tries} tries; use longer codes")

    def expand(self, code: str) -> str:
        """The URL behind ``code``; KeyError if unknown."""
        try:
            return self._urls[code]
        except KeyError:
            raise KeyError(f"unknown short code {code!r}") from None

    def __len__(self) -> int:
        return len(self._urls)
