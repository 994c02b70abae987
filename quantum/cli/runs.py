"""Talking to one run: its status, whether it has ended, waiting for it to start, following it live."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from rich.live import Live
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle, WorkflowQueryFailedError
from temporalio.exceptions import TemporalError
from temporalio.service import RPCError, RPCStatusCode

from quantum.cli.errors import CliError, namespace_missing
from quantum.cli.output import console
from quantum.views import status_panel
from workflows.models import RunStatusView

TERMINAL = {"succeeded", "failed", "rejected", "timed_out", "cancelled"}
TEMPORAL_ENDINGS = {
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued as new",
}


def no_such_run(run_id: str) -> CliError:
    return CliError(f"no run with id {run_id!r}")


def has_ended(run_id: str, status: str, what_now: str = "") -> CliError:
    return CliError(f"{run_id} has already ended ({status})" + (f"; {what_now}" if what_now else ""))


async def fetch_status(handle: WorkflowHandle[Any, Any], *, timeout: float | None = None) -> RunStatusView:
    """The run's ``status`` query; an unknown id or a run that cannot answer is a :class:`CliError`."""
    try:
        view: RunStatusView = await handle.query(
            "status", result_type=RunStatusView, rpc_timeout=timedelta(seconds=timeout) if timeout else None
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND and not namespace_missing(err):
            raise no_such_run(handle.id) from None
        if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise CliError(
                f"{handle.id} did not answer the status query ({err.message}): is a worker running on its task "
                "queue (`quantum up`)?"
            ) from None
        raise
    except WorkflowQueryFailedError as err:
        raise CliError(f"{handle.id} cannot answer the status query ({err.message}): is it a pipeline run?") from None
    return view


async def temporal_status(handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionStatus | None:
    try:
        return (await handle.describe()).status
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND and not namespace_missing(err):
            raise no_such_run(handle.id) from None
        raise


async def ending(handle: WorkflowHandle[Any, Any], status: WorkflowExecutionStatus | None = None) -> str:
    """How an ended run ended: its own status (``rejected``...) when it still answers, else Temporal's."""
    status = status or await temporal_status(handle)
    try:
        own = (await fetch_status(handle, timeout=10)).status
    except (CliError, TemporalError):
        own = None
    if own in TERMINAL:
        return str(own)
    return TEMPORAL_ENDINGS.get(status, "unknown") if status else "unknown"


async def wait_for_run(handle: WorkflowHandle[Any, Any], timeout: float = 60) -> None:
    """Wait until the bridge has started the run behind ``handle``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await handle.describe()
            return
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND or namespace_missing(err):
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise CliError(
                f"no run {handle.id} after {timeout:g} s: is the bridge running (`quantum up` or `quantum bridge`)?"
            )
        await asyncio.sleep(0.2)


GateHandler = Callable[[WorkflowHandle[Any, Any], RunStatusView], Awaitable[None]]


async def follow(handle: WorkflowHandle[Any, Any], *, on_gate: GateHandler | None = None) -> RunStatusView:
    """Show a live stage table until the run ends; ``on_gate`` is called once for each gate that opens."""
    handled: set[str] = set()
    view = await fetch_status(handle)
    with Live(status_panel(view), console=console, refresh_per_second=4, transient=False) as live:
        for tick in itertools.count(1):
            if view.status in TERMINAL:
                break
            if view.pending_gate and on_gate and view.pending_gate not in handled:
                handled.add(view.pending_gate)
                live.stop()
                await on_gate(handle, view)
                live.start()
            await asyncio.sleep(0.25)
            closed = tick % 20 == 0 and await temporal_status(handle) != WorkflowExecutionStatus.RUNNING
            view = await fetch_status(handle)
            live.update(status_panel(view))
            if closed and view.status not in TERMINAL:
                # ended outside the saga (terminated by hand...): its status will not change any more
                raise has_ended(handle.id, await ending(handle))
    if not console.is_terminal:
        console.line()  # the last table ends its line only on a terminal
    return view
