"""One NATS connection per agent, opened on first use and again after it closed."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client as NATS


class LazyConnection:
    """The connection to ``nats_url`` (comma-separated servers; ``credentials``: a ``.creds`` file), opened by the
    first caller that needs it."""

    def __init__(self, nats_url: str, *, credentials: str | None = None) -> None:
        self.nats_url = nats_url
        self.credentials = credentials
        self._nc: NATS | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> NATS:
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                self._nc = await nats.connect(
                    servers=[s.strip() for s in self.nats_url.split(",")],
                    connect_timeout=5,
                    max_reconnect_attempts=-1,
                    user_credentials=self.credentials,
                )
            return self._nc

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
