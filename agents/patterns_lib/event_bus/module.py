"""{{title}}: an in-process publish/subscribe event bus.

Generated for the request: {{prompt}}

Topics are dot-separated tokens (``orders.created``). A subscription pattern may use ``*`` for exactly one token
and ``>`` (last token only) for one or more tokens: ``orders.*`` matches ``orders.created`` but not
``orders.eu.created``; ``orders.>`` matches both. A failing handler never stops the others.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[str, Any], None]
log = logging.getLogger(__name__)


def _tokens(text: str, *, wildcards: bool) -> list[str]:
    parts = text.split(".")
    if not text or any(not part for part in parts):
        raise ValueError(f"invalid topic {text!r}: empty token")
    for index, part in enumerate(parts):
        if part in {"*", ">"} and not wildcards:
            raise ValueError(f"invalid topic {text!r}: wildcards are for subscriptions only")
        if part == ">" and index != len(parts) - 1:
            raise ValueError(f"invalid pattern {text!r}: '>' must be the last token")
    return parts


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether subscription ``pattern`` matches the concrete ``topic``."""
    wanted, actual = _tokens(pattern, wildcards=True), _tokens(topic, wildcards=False)
    for index, part in enumerate(wanted):
        if part == ">":
            return len(actual) > index
        if index >= len(actual) or (part != "*" and part != actual[index]):
            return False
    return len(wanted) == len(actual)


@dataclass(frozen=True)
class Subscription:
    id: int
    pattern: str
    handler: Handler = field(compare=False)


@dataclass
class PublishResult:
    """How many handlers got the event, and the errors any of them raised."""

    delivered: int = 0
    errors: list[tuple[Subscription, Exception]] = field(default_factory=list)


class EventBus:
    """Subscribers in subscription order; ``on_error(subscription, error)`` hears about failing handlers."""

    def __init__(self, on_error: Callable[[Subscription, Exception], None] | None = None) -> None:
        self._subscriptions: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._on_error = on_error

    def subscribe(self, pattern: str, handler: Handler) -> Subscription:
        _tokens(pattern, wildcards=True)
        subscription = Subscription(next(self._ids), pattern, handler)
        self._subscriptions[subscription.id] = subscription
        return subscription

    def unsubscribe(self, subscription: Subscription) -> bool:
        """Remove ``subscription``; False if it was not (or no longer) subscribed."""
        return self._subscriptions.pop(subscription.id, None) is not None

    def publish(self, topic: str, payload: Any = None) -> PublishResult:
        """Call every matching handler with ``(topic, payload)``; handler errors are collected, not raised."""
        _tokens(topic, wildcards=False)
        result = PublishResult()
        for subscription in list(self._subscriptions.values()):
            if subscription.id not in self._subscriptions or not topic_matches(subscription.pattern, topic):
                continue
            try:
                subscription.handler(topic, payload)
            except Exception as err:  # isolation: one bad handler must not break the others
                log.warning("handler %s for %r failed: %r", subscription.id, topic, err)
                result.errors.append((subscription, err))
                if self._on_error is not None:
                    self._on_error(subscription, err)
            else:
                result.delivered += 1
        return result

    def __len__(self) -> int:
        return len(self._subscriptions)
