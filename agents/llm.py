"""The LLM gateway: one client for any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server).

Temporal owns retries: the SDK's own are off, and each failure is classified so the activity either retries
(``ModelRateLimited``, honouring ``Retry-After``; ``ModelUnavailable`` for 5xx, timeouts and lost connections) or
stops (``ModelRejected`` for a bad key, a missing model or a refused request). Replies are asked for as JSON
matching a pydantic schema: structured output where the endpoint supports it, else a plain request whose reply is
parsed (fenced code blocks included). A reply that does not match gets one repair attempt with the validation
errors, then ``InvalidModelReply``. Token usage and latency are recorded. The API key is never logged nor put in a
result or an error.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

import openai
from openai import AsyncOpenAI
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError

from agents.errors import (
    INVALID_MODEL_REPLY,
    MODEL_RATE_LIMITED,
    MODEL_REJECTED,
    MODEL_UNAVAILABLE,
    failure,
    without_secrets,
)
from agents.llm_config import LLMConfig

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)

REQUESTS = Counter(
    "quantum_llm_requests_total", "Requests to the model endpoint by model and outcome: ok, error", ["model", "outcome"]
)
ERRORS = Counter(
    "quantum_llm_errors_total", "Failed requests to the model endpoint by model and error type", ["model", "error_type"]
)
TOKENS = Counter("quantum_llm_tokens_total", "Tokens used, by model and kind", ["model", "kind"])
COST = Counter("quantum_llm_cost_total", "What the model requests cost, in the configured currency", ["model"])
LATENCY = Histogram("quantum_llm_latency_seconds", "Latency of one model request", ["model"])
_FENCED = re.compile(r"```(?:json)?\s*(\{.*?\}|\[.*?\])\s*```", re.DOTALL)


@dataclass(frozen=True)
class Completion(Generic[T]):
    value: T
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_seconds: float
    repaired: bool
    structured: bool
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def parse_reply(text: str) -> Any:
    """The JSON in a reply: the whole text, else the first fenced block, else the outermost braces."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    match = _FENCED.search(text)
    if match:
        return json.loads(match.group(1))
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        return json.loads(text[start : end + 1])
    raise json.JSONDecodeError("no JSON object in the reply", text, 0)


def _usage(reply: Any) -> tuple[int, int]:
    usage = reply.usage
    return (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)


def _retry_after(err: openai.APIStatusError) -> timedelta | None:
    value = err.response.headers.get("retry-after") if err.response is not None else None
    try:
        return timedelta(seconds=float(value)) if value else None
    except ValueError:
        return None


def _rejects_response_format(err: openai.BadRequestError) -> bool:
    text = str(err).lower()
    return "response_format" in text or "json_schema" in text or "not supported" in text


class LLMGateway:
    """Chat completions and embeddings against one OpenAI-compatible endpoint."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._client = AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key or "not-needed",
            timeout=config.timeout_seconds,
            max_retries=0,
        )
        self._structured = True

    def _classify(self, err: Exception) -> Exception:
        key = self.config.api_key
        message = str(err).replace(key, "***") if key else str(err)
        where = f"model endpoint {without_secrets(self.config.base_url)}"
        if isinstance(err, openai.RateLimitError):
            return failure(MODEL_RATE_LIMITED, f"{where} is rate limiting: {message}", retry_after=_retry_after(err))
        if isinstance(err, (openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError)):
            return failure(MODEL_UNAVAILABLE, f"{where} is unavailable: {type(err).__name__}: {message}")
        if isinstance(err, openai.AuthenticationError):
            return failure(MODEL_REJECTED, f"{where} refused the API key (401)")
        if isinstance(err, openai.APIStatusError):
            if err.status_code >= 500:
                return failure(MODEL_UNAVAILABLE, f"{where} answered {err.status_code}: {message}")
            return failure(MODEL_REJECTED, f"{where} refused the request ({err.status_code}): {message}")
        return err

    async def _chat(
        self, messages: list[dict[str, str]], schema: type[BaseModel] | None, max_tokens: int | None
    ) -> tuple[str, Any, float]:
        options: dict[str, Any] = {"max_tokens": max_tokens} if max_tokens else {}
        if schema is not None:
            options["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema(), "strict": False},
            }
        started = time.perf_counter()
        try:
            reply = await self._client.chat.completions.create(
                model=self.config.model,
                messages=messages,  # type: ignore[arg-type]
                **options,
            )
        except openai.OpenAIError as err:
            REQUESTS.labels(self.config.model, "error").inc()
            ERRORS.labels(self.config.model, type(err).__name__).inc()
            raise
        latency = time.perf_counter() - started
        model = self.config.model
        LATENCY.labels(model).observe(latency)
        REQUESTS.labels(model, "ok").inc()
        if reply.usage:
            TOKENS.labels(model, "prompt").inc(reply.usage.prompt_tokens)
            TOKENS.labels(model, "completion").inc(reply.usage.completion_tokens)
            COST.labels(model).inc(self.config.cost(reply.usage.prompt_tokens, reply.usage.completion_tokens))
        return reply.choices[0].message.content or "", reply, latency

    async def complete_json(
        self, *, system: str, user: str, schema: type[T], max_tokens: int | None = None
    ) -> Completion[T]:
        """Ask for a reply matching ``schema``; one repair attempt; classified failures otherwise.

        ``max_tokens`` caps the completion (what is left of a run's token budget); the key, if it appears in
        ``user`` (failing output sent back for a repair), is masked before anything leaves.
        """
        if self.config.api_key:
            user = user.replace(self.config.api_key, "***")
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        prompt_tokens = completion_tokens = 0
        try:
            text, reply, latency = await self._ask(messages, schema, max_tokens)
            prompt_tokens, completion_tokens = _usage(reply)
            structured = self._structured
            try:
                value = schema.model_validate(parse_reply(text))
                repaired = False
            except (ValidationError, json.JSONDecodeError) as err:
                problems = err.errors() if isinstance(err, ValidationError) else str(err)
                messages += [
                    {"role": "assistant", "content": text},
                    {
                        "role": "user",
                        "content": "Your reply does not match the required JSON schema: "
                        f"{problems}. Reply again with only the corrected JSON object.",
                    },
                ]
                text, reply, more = await self._ask(messages, schema, max_tokens)
                latency += more
                prompt_tokens, completion_tokens = (
                    a + b for a, b in zip(_usage(reply), (prompt_tokens, completion_tokens), strict=True)
                )
                try:
                    value = schema.model_validate(parse_reply(text))
                except (ValidationError, json.JSONDecodeError) as again:
                    raise failure(
                        INVALID_MODEL_REPLY,
                        f"the model's reply does not match {schema.__name__} after a repair: {again}",
                    ) from None
                repaired = True
        except openai.OpenAIError as err:
            raise self._classify(err) from None
        return Completion(
            value=value,
            model=reply.model or self.config.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_seconds=latency,
            repaired=repaired,
            structured=structured,
            cost=self.config.cost(prompt_tokens, completion_tokens),
        )

    async def _ask(
        self, messages: list[dict[str, str]], schema: type[BaseModel], max_tokens: int | None
    ) -> tuple[str, Any, float]:
        if self._structured:
            try:
                return await self._chat(messages, schema, max_tokens)
            except openai.BadRequestError as err:
                if not _rejects_response_format(err):
                    raise
                where = without_secrets(self.config.base_url)
                log.info("%s does not take structured output; asking for plain JSON", where)
                self._structured = False
        plain = [*messages]
        plain[0] = {
            "role": "system",
            "content": f"{messages[0]['content']}\nReply with one JSON object matching this JSON schema: "
            f"{json.dumps(schema.model_json_schema())}",
        }
        return await self._chat(plain, None, max_tokens)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not self.config.embedding_model:
            raise failure(MODEL_REJECTED, "no embedding model is configured")
        try:
            reply = await self._client.embeddings.create(model=self.config.embedding_model, input=texts)
        except openai.OpenAIError as err:
            raise self._classify(err) from None
        return [list(item.embedding) for item in reply.data]

    async def close(self) -> None:
        await self._client.close()
