"""The LLM gateway through the real ``openai`` client against a real local server speaking its protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

from agents.llm import LLMConfig, LLMGateway, parse_reply

from .openai_server import OpenAIServer, Reply, error_body

KEY = "sk-test-5ecret-key"


class Answer(BaseModel):
    module: str
    lines: int


GOOD = json.dumps({"module": "billing", "lines": 12})


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def gateway(server: OpenAIServer, **overrides: object) -> LLMGateway:
    options: dict[str, object] = {"base_url": server.url, "model": "test-model", "api_key": KEY, "timeout_seconds": 5}
    options.update(overrides)
    return LLMGateway(LLMConfig(**options))  # type: ignore[arg-type]


async def ask(llm: LLMGateway):  # type: ignore[no-untyped-def]
    return await llm.complete_json(system="You write code.", user="a billing module", schema=Answer)


async def test_structured_output_success_records_tokens(server: OpenAIServer) -> None:
    server.script(Reply(content=GOOD))
    result = await ask(gateway(server))
    assert result.value == Answer(module="billing", lines=12)
    assert (result.prompt_tokens, result.completion_tokens) == (42, 17)
    assert result.structured and not result.repaired and result.model == "test-model"
    (request,) = server.requests
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    assert request["json"]["model"] == "test-model"
    assert request["json"]["response_format"]["type"] == "json_schema"
    assert request["json"]["response_format"]["json_schema"]["schema"]["title"] == "Answer"


async def test_an_endpoint_without_structured_output_gets_plain_json(server: OpenAIServer) -> None:
    server.script(
        Reply(status=400, body=error_body("response_format json_schema is not supported", "invalid_request_error")),
        Reply(content=f"Here it is:\n```json\n{GOOD}\n```\n"),
    )
    result = await ask(gateway(server))
    assert result.value.module == "billing" and not result.structured
    assert "response_format" not in server.requests[1]["json"]
    assert "JSON schema" in server.requests[1]["json"]["messages"][0]["content"]


async def test_an_invalid_reply_gets_one_repair(server: OpenAIServer) -> None:
    server.script(Reply(content='{"module": "billing"}'), Reply(content=GOOD))
    result = await ask(gateway(server))
    assert result.repaired and result.value.lines == 12
    repair = server.requests[1]["json"]["messages"][-1]["content"]
    assert "does not match" in repair and "lines" in repair


async def test_invalid_twice_is_a_clear_non_retryable_failure(server: OpenAIServer) -> None:
    server.script(Reply(content="not json at all"), Reply(content='{"module": 3}'))
    with pytest.raises(ApplicationError) as info:
        await ask(gateway(server))
    assert info.value.type == "InvalidModelReply" and info.value.non_retryable
    assert "Answer" in info.value.message


async def test_429_is_retried_after_retry_after(server: OpenAIServer) -> None:
    server.script(Reply(status=429, body=error_body("slow down", "rate_limit"), headers={"Retry-After": "7"}))
    with pytest.raises(ApplicationError) as info:
        await ask(gateway(server))
    assert info.value.type == "ModelRateLimited" and not info.value.non_retryable
    assert info.value.next_retry_delay == timedelta(seconds=7)


async def test_500_is_retryable(server: OpenAIServer) -> None:
    server.script(Reply(status=500, body=error_body("boom", "server_error")))
    with pytest.raises(ApplicationError) as info:
        await ask(gateway(server))
    assert info.value.type == "ModelUnavailable" and not info.value.non_retryable


async def test_a_timeout_is_retryable(server: OpenAIServer) -> None:
    server.script(Reply(content=GOOD, delay=2.0))
    with pytest.raises(ApplicationError) as info:
        await ask(gateway(server, timeout_seconds=0.5))
    assert info.value.type == "ModelUnavailable" and not info.value.non_retryable
    assert "Timeout" in info.value.message


async def test_401_is_not_retried_and_the_key_stays_secret(server: OpenAIServer) -> None:
    server.script(Reply(status=401, body=error_body(f"Incorrect API key provided: {KEY}", "invalid_api_key")))
    with pytest.raises(ApplicationError) as info:
        await ask(gateway(server))
    assert info.value.type == "ModelRejected" and info.value.non_retryable
    assert KEY not in str(info.value) and KEY not in repr(gateway(server).config)


async def test_credentials_in_the_endpoint_url_stay_out_of_messages_and_logs(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy's user and password in the base URL: the failure (kept in the run's history), the log and the
    configuration's repr show ``***`` where they were."""
    password = "proxy-pass-5e1d"  # noqa: S105 - a canary
    url = server.url.replace("://", f"://gateway:{password}@")
    server.script(
        Reply(status=400, body=error_body("response_format json_schema is not supported", "invalid_request_error")),
        Reply(status=500, body=error_body("boom", "server_error")),
    )
    llm = gateway(server, base_url=url)
    with caplog.at_level("INFO", logger="agents.llm"), pytest.raises(ApplicationError) as info:
        await ask(llm)
    assert info.value.type == "ModelUnavailable" and "model endpoint http://***@127.0.0.1" in info.value.message
    assert "does not take structured output" in caplog.text
    assert password not in str(info.value) and password not in caplog.text and password not in repr(llm.config)


async def test_embeddings(server: OpenAIServer) -> None:
    server.script(Reply())
    vectors = await gateway(server, embedding_model="embed-test").embed(["ab", "abcd"])
    assert vectors == [[2.0, 1.0, 0.5], [4.0, 1.0, 0.5]]
    assert server.requests[0]["json"]["model"] == "embed-test"


def test_replies_are_parsed_from_fences_and_prose() -> None:
    assert parse_reply(GOOD) == {"module": "billing", "lines": 12}
    assert parse_reply(f"sure!\n```\n{GOOD}\n```") == {"module": "billing", "lines": 12}
    assert parse_reply(f"the answer is {GOOD}, enjoy") == {"module": "billing", "lines": 12}
    with pytest.raises(json.JSONDecodeError):
        parse_reply("no json here")
