"""Addresses and probes: is a port free, does Temporal or NATS answer there."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from datetime import timedelta

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from quantum.settings import split_host_port
from quantum.stack.errors import StackError

PROBE_TIMEOUT = 2.0
"""Seconds each step of a probe may take."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the operating system's choice)."""
    with socket.socket(_family(host)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def port_bindable(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` (with ``SO_REUSEADDR``, as servers bind: TIME_WAIT is fine).

    Raises:
        StackError: Binding fails for another reason than the port being taken (an address not on this machine).
    """
    try:
        with socket.socket(_family(host)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return False
        raise StackError(f"cannot listen on {join_host_port(host, port)}: {error.strerror}") from error
    return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_ip(host: str) -> str:
    """The IP a local server binds for ``host`` (``localhost`` is 127.0.0.1, to avoid an IPv6-only bind)."""
    return "127.0.0.1" if host in {"localhost", ""} else host


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def nats_host_port(url: str) -> tuple[str, int]:
    """Host and port of the first server of a NATS URL list (credentials and scheme removed)."""
    first = url.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    first = first.rsplit("@", 1)[-1].split("/", 1)[0]
    return split_host_port(first, default_port=4222)


async def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def temporal_answers(
    address: str, timeout: float = PROBE_TIMEOUT, *, tls: bool = False, api_key: str | None = None
) -> bool:
    """Whether a Temporal frontend answers at ``address``.

    A TCP probe first (so a closed port is a fast no), then a real ``GetSystemInfo`` call, all within ``timeout``.

    Args:
        address: ``host:port`` of the frontend.
        timeout: Seconds for each step.
        tls: Connect with TLS (Temporal Cloud and most production clusters).
        api_key: API key, if the cluster wants one (implies TLS).

    Returns:
        True when the call succeeded; False for anything else, including something that is not Temporal.
    """
    try:
        host, port = split_host_port(address, default_port=7233)
    except ValueError:
        return False
    if not await _tcp_open(host, port, timeout):
        return False

    async def probe() -> None:
        client = await Client.connect(address, tls=tls or bool(api_key), api_key=api_key)
        await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=timedelta(seconds=timeout))

    try:
        await asyncio.wait_for(probe(), timeout)
    except Exception:  # any failure to speak Temporal means "not Temporal (yet)"
        return False
    return True


async def nats_answers(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a NATS server answers at the first server of ``url``: it greets every connection with ``INFO {``."""
    try:
        host, port = nats_host_port(url)
    except ValueError:
        return False
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    try:
        banner = await asyncio.wait_for(reader.readexactly(6), timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return banner == b"INFO {"
