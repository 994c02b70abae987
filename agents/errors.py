"""Domain failures raised by activities, as Temporal ``ApplicationError`` types.

The tree of ``type`` names (``non_retryable`` ones end the stage at once; the rest are retried by the activity's
retry policy)::

    QuantumError
    ├── InvalidRequest        (non-retryable) the request cannot be carried out as written
    ├── UnsafeArtifact        (non-retryable) a generated path or file breaks the workspace rules
    ├── NoPatternMatch        (non-retryable) the offline provider has no pattern for the request
    ├── ToolFailure           (retryable)     a scanner, pytest or a server did not run to completion
    ├── ProvisionFailure      (retryable)     a resource could not be created
    ├── DeploymentFailure     (retryable)     the release process did not start or answer
    ├── ModelRateLimited      (retryable)     the model endpoint said 429; retried after its Retry-After
    ├── ModelUnavailable      (retryable)     5xx, a timeout or no connection to the model endpoint
    ├── ModelRejected         (non-retryable) bad key, no permission, unknown model, a request it refuses
    ├── InvalidModelReply     (non-retryable) the reply did not match the schema, even after one repair
    └── PolicyViolation       (non-retryable) tests failed, coverage too low, a gate was refused
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from temporalio.exceptions import ApplicationError

_USERINFO = re.compile(r"(?<=://)[^/@,\s]*@")


def without_secrets(url: str) -> str:
    """``url`` (or a comma-separated list of them) with any user and password (or token) in it replaced by ``***``:
    a failure's message is kept in the run's history, and logs and consoles show what they are given."""
    return _USERINFO.sub("***@", url)


INVALID_REQUEST = "InvalidRequest"
UNSAFE_ARTIFACT = "UnsafeArtifact"
NO_PATTERN_MATCH = "NoPatternMatch"
TOOL_FAILURE = "ToolFailure"
PROVISION_FAILURE = "ProvisionFailure"
DEPLOYMENT_FAILURE = "DeploymentFailure"
POLICY_VIOLATION = "PolicyViolation"
MODEL_RATE_LIMITED = "ModelRateLimited"
MODEL_UNAVAILABLE = "ModelUnavailable"
MODEL_REJECTED = "ModelRejected"
INVALID_MODEL_REPLY = "InvalidModelReply"

NON_RETRYABLE_TYPES = (
    INVALID_REQUEST,
    UNSAFE_ARTIFACT,
    NO_PATTERN_MATCH,
    POLICY_VIOLATION,
    MODEL_REJECTED,
    INVALID_MODEL_REPLY,
)


def failure(kind: str, message: str, *details: Any, retry_after: timedelta | None = None) -> ApplicationError:
    """Build the ``ApplicationError`` for ``kind``, non-retryable when the tree above says so."""
    return ApplicationError(
        message, *details, type=kind, non_retryable=kind in NON_RETRYABLE_TYPES, next_retry_delay=retry_after
    )
