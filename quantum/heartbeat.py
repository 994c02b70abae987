"""Heartbeats for every activity, from one worker interceptor.

An activity that heartbeats learns of its cancellation (Temporal delivers it in the heartbeat's reply, and the SDK
then cancels the activity's task: the sandbox, a scanner or a release start is killed on the spot), and a worker
that dies is noticed within the heartbeat timeout instead of the whole start-to-close timeout. Rather than every
agent remembering to heartbeat, the worker does it for each activity whose options set a heartbeat timeout, at a
third of that timeout, for as long as the activity runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

MAX_INTERVAL_SECONDS = 5.0


class HeartbeatInterceptor(Interceptor):
    """Heartbeats each running activity that has a heartbeat timeout."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:  # noqa: A002
        return _Heartbeating(next)


class _Heartbeating(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:  # noqa: A002
        timeout = activity.info().heartbeat_timeout
        if not timeout or not asyncio.iscoroutinefunction(input.fn):
            return await super().execute_activity(input)
        beating = asyncio.create_task(_beat(min(MAX_INTERVAL_SECONDS, timeout.total_seconds() / 3)))
        try:
            return await super().execute_activity(input)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


async def _beat(interval: float) -> None:
    # the heartbeat timeout counts from the activity's start, so the first beat can wait an interval: an activity
    # shorter than that (most are) costs the server no heartbeat call at all
    while True:
        await asyncio.sleep(interval)
        activity.heartbeat()
