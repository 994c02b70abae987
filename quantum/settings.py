"""Settings: one pydantic-settings class, read from ``QUANTUM_*`` environment variables and a ``.env`` file."""

from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, StringConstraints, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.llm_config import LLMConfig
from agents.reviewers import check_groups
from events.bridge import BridgeConfig
from events.models import Gate, GateRule, GroupName, Person
from events.streams import StreamLimits
from quantum.codec import KEY_ID_PATTERN, CodecError, Keyring

TASK_QUEUE = "quantum-workflows"
"""The one task queue every workflow and activity of the product is registered on (a contract)."""

DEFAULT_TEMPORAL_ADDRESS = "localhost:7233"
DEFAULT_NATS_URL = "nats://localhost:4222"
DEFAULT_METRICS_PORT = 9464
OPENAI_BASE_URL = "https://api.openai.com/v1"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The project's directory (where `make` creates .venv-checkov)."""


class Settings(BaseSettings):
    """Everything the application reads from its environment.

    Only the application layer (``quantum/``) reads these; agents, the bridge and the publisher receive what they
    need in their constructors.
    """

    model_config = SettingsConfigDict(
        env_prefix="QUANTUM_", env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(default=Path("./.quantum"), description="Where the embedded stack keeps its state.")

    temporal_address: str = DEFAULT_TEMPORAL_ADDRESS
    temporal_namespace: str = "default"
    temporal_api_key: SecretStr | None = None
    temporal_tls: bool = False
    temporal_tls_cert: Path | None = Field(
        default=None, description="mTLS: the client certificate (PEM) presented to Temporal; with temporal_tls_key."
    )
    temporal_tls_key: Path | None = Field(default=None, description="mTLS: the client certificate's private key.")
    temporal_tls_ca: Path | None = Field(
        default=None, description="The CA (PEM) that signed Temporal's server certificate; default: the system's."
    )
    temporal_ui_port: int | None = Field(default=None, description="Web UI port; default gRPC port + 1000.")
    task_queue: str = TASK_QUEUE

    nats_url: str = DEFAULT_NATS_URL
    nats_creds: Path | None = Field(
        default=None, description="A NATS credentials file (JWT and NKey seed, `.creds`) for a secured cluster."
    )

    event_duplicate_window_seconds: float = Field(
        default=120.0,
        ge=120.0,
        description="How long JetStream drops a repeated event id. A run's events may be published again up to 90 s "
        "after their first publication (a carrier activity retried), so less than 120 s is refused.",
    )
    events_max_age_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    events_max_bytes: int = Field(default=1024**3, gt=0)
    dlq_max_age_seconds: float = Field(default=30 * 24 * 3600, gt=0)
    dlq_max_bytes: int = Field(default=256 * 1024**2, gt=0)
    audit_max_bytes: int = Field(default=1024**3, gt=0, description="QUANTUM_AUDIT refuses new records when full.")
    stream_replicas: int = Field(
        default=1, ge=1, le=5, description="Copies of each JetStream stream: 3 on a three-server NATS cluster."
    )
    max_event_bytes: int = Field(default=256 * 1024, gt=0, description="Larger inbound events go to the DLQ.")
    bridge_consumer: str = "quantum-bridge"
    bridge_batch: int = Field(default=64, ge=1, le=1000)
    bridge_max_deliver: int = Field(default=20, ge=2)
    bridge_ack_wait_seconds: float = Field(default=30.0, gt=0)

    qdrant_url: str = ""
    qdrant_api_key: SecretStr | None = None

    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("QUANTUM_LLM_API_KEY", "OPENAI_API_KEY")
    )

    llm_timeout_seconds: float = Field(default=120.0, gt=0)
    llm_embedding_model: str = ""
    llm_prompt_price_per_1k: float = Field(default=0.0, ge=0, description="Price of 1000 prompt tokens, for costs.")
    llm_completion_price_per_1k: float = Field(default=0.0, ge=0, description="Price of 1000 completion tokens.")

    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_host: str = Field(
        default="127.0.0.1", description="Where /metrics listens: 0.0.0.0 in a pod, so Prometheus and probes reach it."
    )
    worker_shutdown_seconds: float = Field(
        default=90.0,
        gt=0,
        description="On SIGTERM the worker stops polling and waits this long for running activities to finish "
        "before cancelling them (keep it under the pod's terminationGracePeriodSeconds).",
    )
    prometheus: bool = Field(
        default=True, description="Whether `quantum up` starts Debian's prometheus (when installed) for the stack."
    )
    prometheus_port: int = Field(default=9090, description="Where the stack's Prometheus serves (on loopback).")
    prometheus_bin: str = Field(default="prometheus", description="The prometheus program: a name on PATH or a path.")

    test_timeout_seconds: float = Field(default=180.0, gt=0, description="Wall-clock limit of one test run.")
    deploy_host: str = "127.0.0.1"
    checkov_bin: str = Field(
        default="",
        description="checkov scanning infrastructure manifests (QSecure); default: the project's .venv-checkov "
        "(`make .venv-checkov`), else checkov on PATH.",
    )
    promtool_bin: str = Field(
        default="promtool", description="promtool checking QSRE's alert rules: a name on PATH or a path."
    )
    reviewer_keys: Path | None = Field(
        default=None,
        description="Reviewers' Ed25519 public keys: a directory of <name>.pub files (raw, base64 or PEM), one such "
        "file, or a JSON file {name: base64 key}. When set, runs take only reviews signed by these keys.",
    )
    reviewer_groups: dict[GroupName, list[Person]] = Field(
        default_factory=dict,
        description='Reviewer groups, as JSON {"release-managers": ["ann", "bob"]}: a policy may name a group.',
    )
    review_defaults: dict[Gate, GateRule] = Field(
        default_factory=dict,
        description='Each gate\'s default rule, as JSON {"deploy": {"groups": ["release-managers"], '
        '"required_approvals": 2, "timeout_seconds": 3600}}: what a request leaves unset. Its quorum is also a '
        "floor, and requester_may_review: false here is never overridden by a request.",
    )
    reviewer_key_file: Path | None = Field(
        default=None, description="The Ed25519 private key (PEM or raw 32 bytes) `quantum review` signs with."
    )
    review_max_validity_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 24 * 3600,
        description="How far past the gate's own clock a signed review may expire; a later expires_at is refused.",
    )
    audit_signing_key: Path | None = Field(
        default=None,
        description="The workers' Ed25519 private key (PEM) signing every audit record; default: "
        "<data dir>/keys/audit-signing.pem, made on first use. Several workers share one (a mounted Secret).",
    )
    audit_verify_keys: Path | None = Field(
        default=None,
        description="The public keys `quantum audit verify` trusts (a directory of *.pub, or one file); default: "
        "the public half of the signing key.",
    )

    codec_keys: SecretStr | None = Field(
        default=None,
        description='AES-256 keys encrypting every payload Temporal stores, as JSON {"<key id>": "<base64 of 32 '
        'bytes>"}; unset (and no keys file): payloads stay in clear.',
    )
    codec_keys_file: Path | None = Field(
        default=None, description="A JSON file of such keys (a mounted Secret), instead of QUANTUM_CODEC_KEYS."
    )
    codec_key_id: Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN.pattern)] | None = Field(
        default=None, description="The key that encrypts new payloads (the others only decrypt); default: the only key."
    )
    codec_server_token: SecretStr | None = Field(
        default=None, description="The bearer token `quantum codec-server` requires of the Web UI and the CLI."
    )

    @field_validator("reviewer_keys", "audit_signing_key", "audit_verify_keys", mode="before")
    @classmethod
    def _empty_means_no_keys(cls, value: object) -> object:
        """``QUANTUM_REVIEWER_KEYS=`` configures no keys (an empty path would be the working directory)."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("reviewer_groups")
    @classmethod
    def _groups_within_bounds(cls, groups: dict[str, list[str]]) -> dict[str, list[str]]:
        return check_groups(groups)

    @field_validator("codec_keys_file")
    @classmethod
    def _one_source_of_keys(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and info.data.get("codec_keys") is not None:
            raise ValueError("set QUANTUM_CODEC_KEYS or QUANTUM_CODEC_KEYS_FILE, not both")
        return path

    def codec_keyring(self) -> Keyring | None:
        """The keys that encrypt what Temporal stores, None when none are set (payloads then stay in clear).

        Read when a connection is made rather than validated with the other settings: a validation error quotes the
        value it refuses, and this value holds the keys.

        Raises:
            CodecError: The keys cannot be read or used; the message names the variable, never a key.
        """
        if self.codec_keys is not None:
            return Keyring.from_json(
                self.codec_keys.get_secret_value(), current=self.codec_key_id, source="QUANTUM_CODEC_KEYS"
            )
        if self.codec_keys_file is not None:
            source = f"QUANTUM_CODEC_KEYS_FILE {self.codec_keys_file}"
            try:
                text = self.codec_keys_file.read_text(encoding="utf-8")
            except OSError as err:
                raise CodecError(f"{source} cannot be read ({err.strerror or type(err).__name__})") from None
            except UnicodeDecodeError:
                raise CodecError(f"{source} is not UTF-8 text") from None
            return Keyring.from_json(text, current=self.codec_key_id, source=source)
        if self.codec_key_id is not None:
            raise CodecError(
                "QUANTUM_CODEC_KEY_ID is set but no keys are: set QUANTUM_CODEC_KEYS or QUANTUM_CODEC_KEYS_FILE"
            )
        return None

    @property
    def nats_credentials(self) -> str | None:
        """The credentials file every NATS connection authenticates with, if any."""
        return str(self.nats_creds) if self.nats_creds else None

    def llm_config(self) -> LLMConfig | None:
        """The model endpoint, or None for the offline pattern provider (no model named, or nowhere to send it)."""
        key = self.llm_api_key.get_secret_value() if self.llm_api_key else None
        if not self.llm_model or not (self.llm_base_url or key):
            return None
        return LLMConfig(
            base_url=self.llm_base_url or OPENAI_BASE_URL,
            model=self.llm_model,
            api_key=key,
            timeout_seconds=self.llm_timeout_seconds,
            embedding_model=self.llm_embedding_model or None,
            prompt_price_per_1k=self.llm_prompt_price_per_1k,
            completion_price_per_1k=self.llm_completion_price_per_1k,
        )

    def checkov_program(self) -> str | None:
        """checkov for QSecure: ``QUANTUM_CHECKOV_BIN`` when set, else the project's ``.venv-checkov/bin/checkov``
        when it exists, else ``checkov`` on PATH; None when there is none (a run with manifests then fails its scan)."""
        if self.checkov_bin:
            return self.checkov_bin
        own = PROJECT_ROOT / ".venv-checkov" / "bin" / "checkov"
        if own.is_file() and os.access(own, os.X_OK):
            return str(own)
        return shutil.which("checkov")

    def stream_limits(self) -> StreamLimits:
        return StreamLimits(
            duplicate_window_seconds=self.event_duplicate_window_seconds,
            events_max_age_seconds=self.events_max_age_seconds,
            events_max_bytes=self.events_max_bytes,
            dlq_max_age_seconds=self.dlq_max_age_seconds,
            dlq_max_bytes=self.dlq_max_bytes,
            audit_max_bytes=self.audit_max_bytes,
            replicas=self.stream_replicas,
        )

    def bridge_config(self) -> BridgeConfig:
        return BridgeConfig(
            task_queue=self.task_queue,
            consumer=self.bridge_consumer,
            batch=self.bridge_batch,
            max_deliver=self.bridge_max_deliver,
            ack_wait_seconds=self.bridge_ack_wait_seconds,
            max_event_bytes=self.max_event_bytes,
        )

    @cached_property
    def data_path(self) -> Path:
        """The data directory as an absolute path, created on first use."""
        path = self.data_dir.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def temporal_host_port(self) -> tuple[str, int]:
        return split_host_port(self.temporal_address, default_port=7233)

    @property
    def nats_host_port(self) -> tuple[str, int]:
        parsed = urlparse(self.nats_url.split(",")[0].strip())
        return parsed.hostname or "localhost", parsed.port or 4222

    @property
    def temporal_ui_url(self) -> str:
        host, port = self.temporal_host_port
        return f"http://{host}:{self.temporal_ui_port or port + 1000}"


def split_host_port(address: str, *, default_port: int) -> tuple[str, int]:
    """Split ``host:port`` (or a bare host) into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    if not port.isdigit():
        raise ValueError(f"address {address!r} has no numeric port")
    return host.strip("[]") or "localhost", int(port)


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine, so the embedded stack may start a server there."""
    return host in {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""} or host.startswith("127.")
