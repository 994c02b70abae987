"""{{title}}: URL slugs from titles.

Generated for the request: {{prompt}}
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^a-z0-9]+")


def slugify(text: str, *, separator: str = "-", max_length: int = 80) -> str:
    """Lower-case ASCII words of ``text`` joined by ``separator``, cut at a word boundary within ``max_length``."""
    if max_length < 1:
        raise ValueError("max_length must be at least 1")
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    words = [w for w in _NON_WORD.split(folded) if w]
    slug = ""
    for word in words:
        candidate = f"{slug}{separator}{word}" if slug else word
        if len(candidate) > max_length:
            break
        slug = candidate
    if not slug and words:
        slug = words[0][:max_length]
    return slug


def unique_slug(text: str, taken: set[str], *, separator: str = "-") -> str:
    """A slug of ``text`` not in ``taken``, numbered ``-2``, ``-3``... when needed."""
    base = slugify(text, separator=separator) or "item"
    slug, number = base, 2
    while slug in taken:
        slug = f"{base}{separator}{number}"
        number += 1
    return slug
