"""Values the chart refuses, each with a message naming the field: values.schema.json first, then the checks across
values that a schema cannot express."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.support import refusal

SCHEMA_REFUSALS: list[tuple[dict[str, Any], list[str]]] = [
    ({"worker": {"replicas": -1}}, ["/worker/replicas", "minimum"]),
    ({"bridge": {"replicas": "2"}}, ["/bridge/replicas", "got string, want integer"]),
    ({"temporal": {"apiKey": "plain-text"}}, ["/temporal/apiKey", "got string, want object"]),
    ({"llm": {"apiKey": {"secretName": "llm", "key": "api-key", "value": "sk-123"}}}, ["/llm/apiKey", "'value'"]),
    ({"nats": {"creds": "SUACBNO..."}}, ["/nats/creds", "want object"]),
    ({"workers": {"replicas": 3}}, ["additional properties 'workers' not allowed"]),
    ({"worker": {"replica": 3}}, ["/worker", "additional properties 'replica' not allowed"]),
    ({"settings": {"QUANTUM_LLM_API_KEY": "sk-123"}}, ["QUANTUM_LLM_API_KEY"]),
    ({"settings": {"NATS_URL": "nats://x:4222"}}, ["NATS_URL"]),
    ({"securityContext": {"runAsUser": 0}}, ["/securityContext/runAsUser", "minimum"]),
    ({"worker": {"sandbox": {"seccompProfile": {"type": "Unconfined"}}}}, ["/worker/sandbox/seccompProfile/type"]),
    ({"worker": {"sandbox": {"seccompProfile": {"type": "Localhost"}}}}, ["missing property 'localhostProfile'"]),
    ({"worker": {"autoscaling": {"targetCPUUtilizationPercentage": 150}}}, ["/worker/autoscaling"]),
    ({"bridge": {"batch": 5000}}, ["/bridge/batch", "maximum"]),
    ({"nats": {"url": "nats-1:4222"}}, ["/nats/url"]),
    ({"metrics": {"port": 80}}, ["/metrics/port", "minimum"]),
    ({"image": {"digest": "latest"}}, ["/image/digest"]),
    ({"networkPolicy": {"metricsFrom": []}}, ["/networkPolicy/metricsFrom", "minItems"]),
    ({"temporal": {"clientCertificate": {"mountPath": "/data/tls"}}}, ["/temporal/clientCertificate/mountPath"]),
    ({"reviewers": {"reviewDefaults": {"merge": {"required_approvals": 2}}}}, ["merge"]),
]


@pytest.mark.parametrize(("values", "says"), SCHEMA_REFUSALS, ids=[str(v) for v, _ in SCHEMA_REFUSALS])
def test_the_schema_refuses_naming_the_field(values: dict[str, Any], says: list[str]) -> None:
    message = refusal(values)
    assert "values don't meet the specifications of the schema" in message
    for fragment in says:
        assert fragment in message


CROSS_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"worker": {"replicas": 3}}, "worker.persistence.existingClaim is required with more than one worker"),
    ({"worker": {"autoscaling": {"enabled": True}}}, "worker.persistence.existingClaim is required"),
    (
        {"worker": {"shutdownSeconds": 120}},
        "worker.shutdownSeconds (120) must be below worker.terminationGracePeriodSeconds (120)",
    ),
    (
        {"bridge": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
        "bridge.autoscaling.minReplicas (5) must not exceed bridge.autoscaling.maxReplicas (2)",
    ),
    ({"reviewers": {"keys": {"secretName": "a", "configMapName": "b"}}}, "reviewers.keys: set secretName or"),
    ({"settings": {"QUANTUM_NATS_URL": "nats://x:4222"}}, "settings.QUANTUM_NATS_URL: the chart sets"),
]


@pytest.mark.parametrize(("values", "says"), CROSS_REFUSALS, ids=[str(v) for v, _ in CROSS_REFUSALS])
def test_values_that_contradict_each_other_are_refused(values: dict[str, Any], says: str) -> None:
    assert says in refusal(values)
