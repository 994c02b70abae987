"""Turning what can go wrong in a command into one line that says what happened, and an exit code."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from pydantic import ValidationError
from temporalio.exceptions import TemporalError
from temporalio.service import RPCError, RPCStatusCode

from agents.errors import without_secrets
from agents.reviewers import KeyFileError
from quantum.cli.output import fail
from quantum.codec import CodecError
from quantum.metrics import MetricsError
from quantum.settings import Settings
from quantum.stack import StackError

T = TypeVar("T")

USAGE = 2
"""The exit code of a command used wrongly (a missing option, an invalid value); 1 is for everything else."""


class CliError(Exception):
    """A failure to report in one line, without a traceback; ``code`` 2 means the command was used wrongly."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


_GRPC_MESSAGE = re.compile(r'message: "([^"]+)"')


def reason(err: BaseException) -> str:
    """A short reason for a connection failure: the innermost message where the SDK nests one, else the text."""
    text = str(err).strip()
    found = _GRPC_MESSAGE.findall(text)
    if found:
        return str(found[-1]).lower()
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return text or type(err).__name__


def namespace_missing(err: RPCError) -> bool:
    """Whether Temporal answered that the namespace (not the run) does not exist."""
    if err.status != RPCStatusCode.NOT_FOUND:
        return False
    try:
        details = [detail.type_url for detail in err.grpc_status.details]
    except Exception:  # details that do not decode: the message says it
        details = []
    return any(url.endswith("NamespaceNotFoundFailure") for url in details) or err.message.startswith("Namespace ")


def explain_temporal(err: TemporalError, settings: Settings | None) -> str:
    where = f"Temporal at {settings.temporal_address}" if settings else "Temporal"
    if not isinstance(err, RPCError):
        return f"Temporal: {err}"
    if err.status == RPCStatusCode.UNAVAILABLE:
        return f"{where} does not answer ({reason(err)}); start the stack with `quantum up`"
    if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
        queue = f" on task queue {settings.task_queue}" if settings else ""
        return f"{where} did not answer in time ({err.message}): is a worker running{queue} (`quantum up`)?"
    if namespace_missing(err) and settings:
        return f"namespace {settings.temporal_namespace!r} does not exist on {where} (QUANTUM_TEMPORAL_NAMESPACE)"
    if err.status in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
        return f"{where} refused the call ({err.message}); check QUANTUM_TEMPORAL_API_KEY and QUANTUM_TEMPORAL_TLS"
    return f"{where} refused the call: {err.message} ({err.status.name.lower()})"


def explain_nats(err: nats.errors.Error, settings: Settings | None) -> str:
    where = f"NATS at {without_secrets(settings.nats_url)}" if settings else "NATS"
    if isinstance(err, nats.js.errors.APIError):
        return f"{where} refused the request: {err.description or type(err).__name__} (code {err.code})"
    if isinstance(err, nats.js.errors.NoStreamResponseError):
        return f"{where} has no JetStream stream for that subject: start the stack with `quantum up`"
    if isinstance(err, nats.errors.TimeoutError):
        return f"{where} did not answer in time"
    if isinstance(err, nats.errors.ConnectionClosedError | nats.errors.StaleConnectionError):
        return f"the connection to {where} was lost"
    return f"{where}: {str(err) or type(err).__name__}"


def explain(err: BaseException, settings: Settings | None = None) -> str | None:
    """One line saying what happened, for the errors the services, files and settings raise; None for a bug."""
    if isinstance(err, CliError | StackError | MetricsError | CodecError):
        return str(err)
    if isinstance(err, KeyFileError):
        return f"QUANTUM_REVIEWER_KEYS: {err}"
    if isinstance(err, TemporalError):
        return explain_temporal(err, settings)
    if isinstance(err, nats.errors.Error):
        return explain_nats(err, settings)
    if isinstance(err, TimeoutError):
        return "a call to Temporal or NATS did not answer in time"
    if isinstance(err, OSError):
        where = f" {err.filename}" if err.filename else ""
        return f"cannot use{where}: {err.strerror or err}"
    if isinstance(err, ValidationError):
        return settings_problem(err)
    return None


def settings_problem(err: ValidationError) -> str:
    """The settings that are not valid, named as the variables that set them."""
    problems = []
    for problem in err.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "settings"
        variable = name if name.isupper() else f"QUANTUM_{name.upper()}"
        problems.append(f"{variable}: {problem['msg']}")
    return "the settings are not valid: " + "; ".join(problems)


def run(coro: Coroutine[Any, Any, T], settings: Settings | None = None) -> T:
    """Run ``coro``; what goes wrong in it becomes one line on stderr and exit code 1 (or the error's own)."""
    try:
        return asyncio.run(coro)
    except CliError as err:
        fail(str(err), err.code)
    except Exception as err:
        message = explain(err, settings)
        if message is None:
            raise
        fail(message)
