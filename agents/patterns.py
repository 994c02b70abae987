"""The pattern store: vetted patterns (and successful generations) in Qdrant, found by similarity to a request.

``qdrant-client`` runs in local mode by default (an on-disk path, or ``:memory:``) and against a Qdrant server
when one is configured; the same calls serve both. Embeddings come from the configured OpenAI-compatible endpoint,
or, with none, from :class:`HashingEmbedder`: a deterministic offline embedder (feature hashing of words and
character trigrams), which needs no model and gives the same vector for the same text on every machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.library import Pattern, PatternLibrary, words

if TYPE_CHECKING:  # qdrant-client is imported where a store is opened or written: it takes 70 MB and most of a second
    from qdrant_client import AsyncQdrantClient

COLLECTION = "quantum-patterns"
NAMESPACE = uuid.UUID("5b0e1a2c-3d4f-4a6b-8c9d-0e1f2a3b4c5d")

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]


class HashingEmbedder:
    """Deterministic offline embeddings: words (weight 1) and character trigrams (weight 0.3), hashed to ``dim``."""

    name = "hashing-v1"

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dim
        for word in words(text):
            features = [(f"w:{word}", 1.0)] + [(f"c:{word[i : i + 3]}", 0.3) for i in range(max(1, len(word) - 2))]
            for feature, weight in features:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                index = int.from_bytes(digest[:4], "little") % self.dim
                sign = 1.0 if digest[4] & 1 else -1.0
                vector[index] += sign * weight
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(text) for text in texts]


@dataclass(frozen=True)
class Match:
    name: str
    score: float
    pattern: Pattern


def document(pattern: Pattern) -> str:
    """What a pattern is found by: its name and keywords (twice, they matter most) and its description."""
    name = pattern.name.replace("_", " ")
    keywords = " ".join(pattern.keywords)
    return f"{name} {name} {keywords} {keywords} {pattern.description}"


class PatternStore:
    """Patterns in a Qdrant collection; :meth:`search` returns the closest ones to a request."""

    def __init__(
        self,
        client: AsyncQdrantClient,
        embed: Embed,
        *,
        dim: int | None = None,
        library: PatternLibrary | None = None,
        collection: str = COLLECTION,
    ) -> None:
        self.client = client
        self.embed = embed
        self.dim = dim  # None: learnt from the embedder's first vector
        self.library = library
        self.collection = collection
        self._ready = False
        self._lock = asyncio.Lock()

    async def ensure(self) -> None:
        """Create the collection when it is missing and index the shipped library (once per process)."""
        async with self._lock:
            if self._ready:
                return
            if self.dim is None:
                self.dim = len((await self.embed(["dimension probe"]))[0])
            if not await self.client.collection_exists(self.collection):
                from qdrant_client.models import Distance, VectorParams

                await self.client.create_collection(
                    self.collection, vectors_config=VectorParams(size=self.dim, distance=Distance.COSINE)
                )
            self._ready = True
        if self.library is not None:
            await self.index(self.library)

    async def index(self, library: PatternLibrary) -> int:
        """Upsert every pattern of ``library`` (ids derive from names: indexing again changes nothing)."""
        return await self.add(list(library.patterns.values()), origin="library")

    async def add(self, patterns: Sequence[Pattern], *, origin: str) -> int:
        """Add patterns, e.g. a successful generation (``origin="generated"``), so later requests can find them."""
        await self.ensure()
        if not patterns:
            return 0
        from qdrant_client.models import PointStruct

        vectors = await self.embed([document(p) for p in patterns])
        points = [
            PointStruct(
                id=str(uuid.uuid5(NAMESPACE, p.name)),
                vector=vector,
                payload={
                    "name": p.name,
                    "description": p.description,
                    "keywords": list(p.keywords),
                    "module_template": p.module_template,
                    "tests_template": p.tests_template,
                    "origin": origin,
                },
            )
            for p, vector in zip(patterns, vectors, strict=True)
        ]
        await self.client.upsert(self.collection, points=points)
        return len(points)

    async def search(self, text: str, k: int = 3) -> list[Match]:
        await self.ensure()
        (vector,) = await self.embed([text])
        result = await self.client.query_points(self.collection, query=vector, limit=k, with_payload=True)
        return [
            Match(name=str(p.payload["name"]), score=float(p.score), pattern=_pattern(p.payload))
            for p in result.points
            if p.payload
        ]

    async def close(self) -> None:
        await self.client.close()


def _pattern(payload: dict[str, Any]) -> Pattern:
    return Pattern(
        name=payload["name"],
        description=payload["description"],
        keywords=tuple(payload["keywords"]),
        module_template=payload["module_template"],
        tests_template=payload["tests_template"],
    )


def open_client(*, url: str, api_key: str | None, path: str) -> AsyncQdrantClient:
    """A Qdrant server when ``url`` is set, else local mode at ``path``.

    Local mode holds a lock on its folder; when another process of this machine holds it (``quantum up`` and
    ``quantum demo`` side by side), this process keeps its patterns in memory instead, and says so.
    """
    from qdrant_client import AsyncQdrantClient

    if url:
        return AsyncQdrantClient(url=url, api_key=api_key)
    try:
        return AsyncQdrantClient(path=path)
    except (RuntimeError, BlockingIOError) as err:
        logging.getLogger(__name__).warning("pattern store at %s is in use (%s); keeping it in memory", path, err)
        return AsyncQdrantClient(location=":memory:")
