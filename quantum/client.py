"""Connecting to Temporal with the product's data converter."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from quantum.settings import Settings


async def connect(settings: Settings, *, address: str | None = None, runtime: Runtime | None = None) -> Client:
    """Connect to the Temporal frontend named by the settings (or ``address``), JSON payloads via pydantic;
    ``runtime``: the Temporal runtime whose metrics the process exposes (default: the SDK's)."""
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        address or settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=settings.temporal_tls or bool(api_key),
        api_key=api_key,
        runtime=runtime,
    )
