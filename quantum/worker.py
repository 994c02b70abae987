"""The worker assembly: build every agent with its clients, gather their activities, register the workflows."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from temporalio import activity
from temporalio.client import Client
from temporalio.common import HeaderCodecBehavior
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

from agents.codegen import CodegenAgent
from agents.deploy import DeployAgent
from agents.infra import InfraAgent
from agents.library import PatternLibrary
from agents.patterns import COLLECTION, HashingEmbedder, PatternStore, open_client
from agents.reviewers import ReviewerKeysAgent
from agents.sandbox import Sandbox
from agents.security import SecurityAgent
from agents.sre import SREAgent
from agents.testgen import TestgenAgent
from agents.workspace import Workspaces
from events.audit import AuditRecorder
from events.publisher import EventPublisher
from quantum.audit_keys import audit_signing_key
from quantum.heartbeat import HeartbeatInterceptor
from quantum.metrics import ActivityMetricsInterceptor
from quantum.outbox import OutboxInterceptor
from quantum.settings import Settings
from workflows import WORKFLOWS

if TYPE_CHECKING:
    from agents.llm import LLMGateway


@dataclass
class Agents:
    """Every agent of the product, built once per worker process."""

    codegen: CodegenAgent
    testgen: TestgenAgent
    security: SecurityAgent
    infra: InfraAgent
    deploy: DeployAgent
    sre: SREAgent
    publisher: EventPublisher
    audit: AuditRecorder
    reviewers: ReviewerKeysAgent

    def activities(self) -> list[Callable[..., Any]]:
        gathered = [
            *self.codegen.activities(),
            *self.testgen.activities(),
            *self.security.activities(),
            *self.infra.activities(),
            *self.deploy.activities(),
            *self.sre.activities(),
            *self.publisher.activities(),
            *self.audit.activities(),
            *self.reviewers.activities(),
        ]
        return check_unique(gathered)

    async def close(self) -> None:
        """Stop what the agents keep running in this process (the embedded stack's deployments), disconnect."""
        self.deploy.stop_all()
        await self.publisher.close()
        await self.audit.close()
        if self.codegen.store is not None:
            await self.codegen.store.close()
        if self.codegen.llm is not None:
            await self.codegen.llm.close()


def build_agents(settings: Settings, *, nats_url: str | None = None) -> Agents:
    """Build every agent with the clients and places the settings name."""
    data = settings.data_path
    workspaces = Workspaces(data / "workspaces")
    patterns = PatternLibrary()
    llm_config = settings.llm_config()
    llm = None
    if llm_config is not None:
        from agents.llm import LLMGateway  # the openai SDK, loaded only where a model is configured

        llm = LLMGateway(llm_config)
    return Agents(
        codegen=CodegenAgent(workspaces, patterns, build_pattern_store(settings, patterns, llm), llm),
        testgen=TestgenAgent(workspaces, patterns, Sandbox(), llm),
        security=SecurityAgent(workspaces, releases=data / "security" / "releases", checkov=settings.checkov_program()),
        infra=InfraAgent(data / "infra", nats_url or settings.nats_url, nats_credentials=settings.nats_credentials),
        deploy=DeployAgent(workspaces, data / "deployments", host=settings.deploy_host),
        sre=SREAgent(data / "monitoring", promtool=settings.promtool_bin),
        publisher=EventPublisher(nats_url or settings.nats_url, credentials=settings.nats_credentials),
        audit=AuditRecorder(
            nats_url or settings.nats_url,
            credentials=settings.nats_credentials,
            signing_key=audit_signing_key(settings),
        ),
        reviewers=ReviewerKeysAgent(
            settings.reviewer_keys,
            groups=settings.reviewer_groups,
            defaults={gate: rule.model_dump(mode="json") for gate, rule in settings.review_defaults.items()},
            max_validity_seconds=settings.review_max_validity_seconds,
        ),
    )


def build_pattern_store(settings: Settings, library: PatternLibrary, llm: LLMGateway | None) -> PatternStore:
    """Qdrant (a server when ``QUANTUM_QDRANT_URL`` is set, else local mode in the data dir) with the shipped library.

    Embeddings come from the model endpoint when it names an embedding model, else from the deterministic offline
    embedder; each kind has a collection of its own, since their vectors do not mix.
    """
    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    client = open_client(url=settings.qdrant_url, api_key=api_key, path=str(settings.data_path / "qdrant"))
    if llm is not None and llm.config.embedding_model:
        model = llm.config.embedding_model
        name = re.sub(r"[^a-z0-9]+", "-", model.lower())[:60]
        if name != model:  # models whose names read alike once made plain must not share vectors
            name += "-" + hashlib.sha256(model.encode()).hexdigest()[:8]
        return PatternStore(client, llm.embed, library=library, collection=f"{COLLECTION}-{name}")
    embedder = HashingEmbedder()
    return PatternStore(client, embedder, dim=embedder.dim, library=library)


def check_unique(activities: Sequence[Callable[..., Any]]) -> list[Callable[..., Any]]:
    """Refuse two activities registered under one name: namespaced names make a collision a loud error."""
    names = Counter(activity_name(fn) for fn in activities)
    clashes = sorted(name for name, count in names.items() if count > 1)
    if clashes:
        raise ValueError(f"activity names registered twice: {', '.join(clashes)}")
    return list(activities)


def activity_name(fn: Callable[..., Any]) -> str:
    defn = activity._Definition.from_callable(fn)  # noqa: SLF001 - the SDK's own record of the name
    if defn is None or defn.name is None:
        raise ValueError(f"{fn!r} is not an activity")
    return defn.name


def new_worker(
    client: Client,
    activities: Sequence[Callable[..., Any]],
    *,
    task_queue: str,
    workflows: Sequence[type] = WORKFLOWS,
    **options: Any,
) -> Worker:
    """A worker for ``workflows`` (the product's three) and ``activities`` on ``task_queue``; every activity
    heartbeats, and the events a run's activities carry are published through the activity registered as
    ``events.publish``."""
    config = client.config()
    if config["data_converter"].payload_codec and config["header_codec_behavior"] != HeaderCodecBehavior.CODEC:
        raise ValueError(
            "this client encodes payloads but not headers, where runs carry their events: connect with "
            "quantum.client.connect (or header_codec_behavior=HeaderCodecBehavior.CODEC)"
        )
    by_name = {activity_name(fn): fn for fn in activities}
    interceptors = [
        HeartbeatInterceptor(),
        ActivityMetricsInterceptor(),
        OutboxInterceptor(by_name.get("events.publish")),
        *options.pop("interceptors", []),
    ]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(workflows),
        activities=list(activities),
        interceptors=interceptors,
        **options,
    )


def new_replayer(**options: Any) -> Replayer:
    """A replayer of the three workflows with the workflow interceptors a worker has (a run's outbox among them)."""
    options.setdefault("data_converter", pydantic_data_converter)
    return Replayer(workflows=list(WORKFLOWS), interceptors=[OutboxInterceptor(None)], **options)
