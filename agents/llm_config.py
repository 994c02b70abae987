"""Where the model is: the settings build it without loading the ``openai`` SDK, which only the worker needs."""

from __future__ import annotations

from dataclasses import dataclass

from agents.errors import without_secrets


@dataclass(frozen=True)
class LLMConfig:
    """Where the model is; the application builds it from settings."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_seconds: float = 60.0
    embedding_model: str | None = None
    prompt_price_per_1k: float = 0.0
    completion_price_per_1k: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a request cost at the configured prices (0 when none are configured)."""
        return round(
            prompt_tokens * self.prompt_price_per_1k / 1000 + completion_tokens * self.completion_price_per_1k / 1000, 6
        )

    def __repr__(self) -> str:  # never show the key
        return f"LLMConfig(base_url={without_secrets(self.base_url)!r}, model={self.model!r})"
