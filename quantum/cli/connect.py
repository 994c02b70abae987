"""Settings and connections for one command: Temporal and NATS, each failure said in one line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.aio.client import Client as NATS
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.runtime import Runtime

from agents.errors import without_secrets
from quantum.bus import BusError
from quantum.cli.errors import CliError, reason, settings_problem
from quantum.cli.output import fail
from quantum.client import connect
from quantum.codec import CodecError
from quantum.settings import Settings

T = TypeVar("T")


def load_settings() -> Settings:
    """The settings from ``QUANTUM_*`` variables and ``.env``; invalid ones end the command in one line."""
    try:
        return Settings()
    except ValidationError as err:
        fail(settings_problem(err))


async def client_for(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    """The Temporal client of the settings; an unreachable or unusable server is one :class:`CliError`."""
    try:
        return await connect(settings, runtime=runtime)
    except CodecError as err:  # the codec keys, not the server
        raise CliError(str(err)) from None
    except (RuntimeError, OSError) as err:
        raise CliError(
            f"Temporal at {settings.temporal_address} does not answer ({reason(err)}); start the stack with "
            "`quantum up` or set QUANTUM_TEMPORAL_ADDRESS"
        ) from None
    except Exception as err:  # an address the SDK cannot parse, TLS settings it refuses
        raise CliError(
            f"Temporal at {settings.temporal_address} cannot be used ({reason(err)}); check QUANTUM_TEMPORAL_ADDRESS"
        ) from None


async def nats_for(settings: Settings) -> NATS:
    """Connect to NATS once (each server of a cluster tried twice), quietly: a failure is one :class:`CliError`."""
    seen: list[Exception] = []

    async def remember(err: Exception) -> None:  # instead of the client's default, which logs a traceback
        seen.append(err)

    try:
        return await nats.connect(
            servers=[s.strip() for s in settings.nats_url.split(",")],
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=remember,
            user_credentials=settings.nats_credentials,
        )
    except Exception as err:  # nats raises several unrelated types for an unreachable server
        cause = seen[-1] if seen else err
        raise CliError(
            f"NATS at {without_secrets(settings.nats_url)} does not answer ({reason(cause)}); start the stack with "
            "`quantum up` or set QUANTUM_NATS_URL"
        ) from None


async def on_bus(settings: Settings, action: Callable[[NATS], Awaitable[T]]) -> T:
    """Connect to NATS, do ``action``, disconnect; a :class:`BusError` becomes a one-line CLI error."""
    nc = await nats_for(settings)
    try:
        return await action(nc)
    except BusError as err:
        raise CliError(str(err)) from None
    finally:
        await nc.close()
