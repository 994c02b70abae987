"""Every dashboard panel and every alert has data from real runs, scraped by a real Prometheus.

Real pipelines run on the dev server (a success past a security gate approved by a review event, a rejection, a
failure whose compensation fails, a gate that expires after its reminder and escalation, a code generation through a
scripted model that errs once), the bridge runs as its own process (``quantum bridge``) and dead-letters a malformed
event, and Debian's ``prometheus`` scrapes the worker (this process) and the bridge every second. Then each panel's
query and each alert's expression is evaluated: each returns series, with every label its legend names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from events.catalog import INBOUND, workflow_id
from events.envelope import new_event
from events.publisher import PublishEventInput
from quantum.metrics import serve_metrics
from quantum.observability.alerts import rules
from quantum.observability.dashboards import dashboards, panel_queries
from quantum.stack.prometheus import ProcessTarget, PrometheusServer, write_config
from quantum.telemetry import telemetry
from tests.agents.openai_server import OpenAIServer, Reply, error_body
from tests.cli.support import QUANTUM
from tests.conftest import free_port, nats_server
from tests.workflows.conftest import MODEL_KEY, failing, files, harness_with, wait_for, wait_for_gate
from workflows.models import PipelineResult

pytestmark = [
    pytest.mark.workflow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed"),
]

INSECURE_SOURCE = {"ops.py": "import subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n"}
SMALL_INFRA = [{"kind": "directory", "name": "assets"}]
_COMPARISON = re.compile(r"^(?P<lhs>.*?)\s*(?:>|<|==|!=|>=|<=)\s*[0-9.e+-]+\s*$", re.DOTALL)


@contextlib.contextmanager
def bridge_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``quantum bridge`` as operators run it, stopped with SIGTERM."""
    with log.open("wb") as out:
        proc = subprocess.Popen([str(QUANTUM), "bridge"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def query(http: httpx.AsyncClient, prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = (await http.get(f"{prometheus}/api/v1/query", params={"query": expr})).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


async def wait_until(what: str, check: Any, timeout: float = 120) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.5)


async def test_every_panel_and_alert_has_data_from_real_runs(client: Client, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        nats_url = await asyncio.to_thread(stack.enter_context, nats_server(tmp_path / "nats"))
        measured = await Client.connect(
            client.service_client.config.target_host,
            data_converter=pydantic_data_converter,
            runtime=telemetry().runtime,
        )
        data = tmp_path / "data"
        worker_port, bridge_port, prometheus_port = free_port(), free_port(), free_port()
        metrics = serve_metrics(worker_port)
        stack.callback(metrics.shutdown)
        stack.enter_context(ProcessTarget(data, "quantum-worker", f"127.0.0.1:{worker_port}"))
        write_config(data, temporal_metrics=None, interval="1s")
        prometheus = PrometheusServer(
            binary=str(shutil.which("prometheus")),
            host="127.0.0.1",
            port=prometheus_port,
            data=data,
            log_file=tmp_path / "prometheus.log",
        )
        await prometheus.start()
        try:
            async with harness_with(measured, nats_url, tmp_path) as harness:
                env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
                env.update(
                    QUANTUM_DATA_DIR=str(data),
                    QUANTUM_TEMPORAL_ADDRESS=client.service_client.config.target_host,
                    QUANTUM_NATS_URL=nats_url,
                    QUANTUM_TASK_QUEUE=harness.task_queue,
                    QUANTUM_METRICS_PORT=str(bridge_port),
                )
                with bridge_process(env, tmp_path / "bridge.log"):
                    await run_the_pipelines(harness, nats_url, tmp_path)
                    await check_every_query(prometheus.url)
        finally:
            await prometheus.stop()


@activity.defn(name="events.publish")
async def refusing_stage_events(inp: PublishEventInput) -> None:
    if inp.type == "quantum.stage.completed":
        raise ApplicationError(f"{inp.type} is over the server's max_payload", type="InvalidEvent", non_retryable=True)


async def run_the_pipelines(harness: Any, nats_url: str, tmp_path: Path) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()

    async def request(**fields: Any) -> Any:
        body = {"project": harness.project, "prompt": "a slugify helper for titles", "requested_by": "alice"}
        body.update(fields)
        event = new_event("quantum.pipeline.requested", body, source="tests")
        await js.publish(event.nats_subject, event.to_bytes(), headers={"Nats-Msg-Id": event.id})
        run_id = workflow_id(INBOUND[event.type], event.id)
        handle = harness.client.get_workflow_handle(run_id, result_type=PipelineResult)

        async def started() -> bool:
            try:
                await handle.describe()
            except Exception:
                return False
            return True

        await wait_until("the bridge starts the run", started)
        return handle

    async def review(handle: Any, gate: str, reviewer: str, approved: bool) -> None:
        data = {"pipeline_id": handle.id, "gate": gate, "reviewer": reviewer, "approved": approved}
        event = new_event("quantum.review.submitted", data, source="tests")
        await js.publish(event.nats_subject, event.to_bytes(), headers={"Nats-Msg-Id": event.id})

    try:
        async with harness.worker():
            # a success with findings, past its security gate, approved through the bus
            scanned = await request(source=INSECURE_SOURCE, test_policy={"min_coverage": 0})
            await wait_for_gate(scanned, "security")
            await review(scanned, "security", "alice", True)  # the requester: refused, dead-lettered
            await review(scanned, "security", "bob", True)
            # a rejection
            rejected = await request(environment="prod", project=f"{harness.project}-p")
            await wait_for_gate(rejected, "deploy")
            await review(rejected, "deploy", "bob", False)
            # a gate that reminds, escalates and expires
            expiring = await request(
                environment="prod", project=f"{harness.project}-e", approval_policy={"timeout_seconds": {"deploy": 4}}
            )
            # an event the bridge cannot use
            await js.publish("quantum.events.pipeline.requested", b"{not json", headers={"Nats-Msg-Id": "broken-1"})
            assert (await scanned.result()).status == "succeeded"
            for handle in (rejected, expiring):
                with pytest.raises(WorkflowFailureError):
                    await handle.result()
        # a failure whose compensation fails too: the run is left partially compensated
        # ... on a worker whose bus refuses the stages' events (as one with a tiny max_payload would)
        async with harness.worker(
            failing("deploy.verify"), failing("infra.destroy", "destroy broke"), refusing_stage_events
        ):
            broken = await harness.start_pipeline(project=f"{harness.project}-f", infrastructure=SMALL_INFRA)
            with pytest.raises(WorkflowFailureError):
                await broken.result()
            view = await wait_for(broken, lambda v: v.status == "failed")
            assert any(c.outcome == "failed" for c in view.compensations)
    finally:
        await nc.close()
    await generate_through_a_model(harness.client, nats_url, tmp_path)


async def generate_through_a_model(client: Client, nats_url: str, tmp_path: Path) -> None:
    """Three code generations on a model endpoint that answers two of five requests with HTTP 500 (each failed
    attempt is retried by Temporal): enough requests, and enough errors among them, for the model-errors alert."""
    code = files(**{"slugs.py": "def slugify(text):\n    return text.lower().replace(' ', '-')\n"})
    overloaded = Reply(status=500, body=error_body("overloaded", "server_error"))
    with OpenAIServer() as server:
        server.script(overloaded, code, overloaded, code, code)
        settings = {"llm_base_url": server.url, "llm_model": "coder-1", "llm_api_key": MODEL_KEY}
        async with harness_with(client, nats_url, tmp_path / "model", **settings) as harness, harness.worker():
            request = {"project": "slugs", "prompt": "a slugify helper for titles", "requested_by": "alice"}
            for _ in range(3):
                handle = await harness.start("CodeGenerationWorkflow", request, prefix="codegen")
                await handle.result()


async def check_every_query(prometheus: str) -> None:
    """Wait for the scrapes to see the runs, then evaluate every panel query and every alert expression."""
    async with httpx.AsyncClient(timeout=30) as http:

        async def scraped() -> bool:
            found = await query(http, prometheus, 'quantum_runs_finished_total{status="failed"}')
            bridge = await query(http, prometheus, 'quantum_bridge_dead_letters_total{job="quantum-bridge"}')
            return bool(found and bridge)

        await wait_until("Prometheus scrapes the worker and the bridge", scraped)
        await asyncio.sleep(5)  # a few more scrapes: every rate() has two samples after the last run
        missing: list[str] = []
        for name, board in dashboards().items():
            for title, expr, legend in panel_queries(board):
                series = await query(http, prometheus, expr)
                if not series:
                    missing.append(f"{name} / {title}: no data for {expr}")
                    continue
                for labels in (s["metric"] for s in series):
                    lacking = [label for label in legend if label not in labels]
                    if lacking:
                        missing.append(f"{name} / {title}: {expr} has no label {lacking} ({labels})")
                        break
        for rule in rules():
            expr = rule["expr"]
            if await query(http, prometheus, expr):
                continue  # it fires on what the runs did
            shown = _COMPARISON.match(expr)  # a healthy value (no lag, free slots): the series it compares exist
            lhs = shown.group("lhs") if shown else expr
            if not await query(http, prometheus, lhs):
                missing.append(f"alert {rule['alert']}: no data for {lhs}")
        assert not missing, "\n".join(missing)
        for alert in ("QuantumRunsPartiallyCompensated", "QuantumPipelineFailureRateHigh"):
            firing = await query(http, prometheus, f'ALERTS{{alertname="{alert}"}}')
            assert firing, f"{alert} does not fire after the runs above"
