"""{{title}}: retries with exponential backoff and jitter.

Generated for the request: {{prompt}}

``sleep`` and ``rand`` are injectable, so tests (and callers with their own event loop or clock) control time.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class RetryError(Exception):
    """Every attempt failed; ``last`` is the final exception (also chained as ``__cause__``)."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {last!r}")
        self.attempts = attempts
        self.last = last


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (1-based): ``base * factor**(n-1)``, capped at ``maximum``, spread by ``jitter``.

    ``jitter`` is a fraction: 0.2 spreads each delay uniformly over +/-20 % (never above ``maximum``).
    """

    base: float = 0.1
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.base < 0 or self.factor < 1 or self.maximum < self.base or not 0 <= self.jitter <= 1:
            raise ValueError("need base >= 0, factor >= 1, maximum >= base and 0 <= jitter <= 1")

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        raw = min(self.maximum, self.base * self.factor ** (retry - 1))
        return min(self.maximum, raw * (1 + self.jitter * (2 * rand() - 1)))


DEFAULT_BACKOFF = Backoff()


def retry_call(
    func: Callable[[], T],
    *,
    attempts: int = 3,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    backoff: Backoff = DEFAULT_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Call ``func`` until it returns, at most ``attempts`` times, sleeping between tries.

    Only exceptions of the ``retry_on`` types are retried; any other propagates at once. When the last attempt
    fails, :class:`RetryError` is raised. ``on_retry(attempt, error, delay)`` is told about each retry.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return func()
        except retry_on as err:
            if attempt == attempts:
                raise RetryError(attempts, err) from err
            wait = backoff.delay(attempt, rand)
            if on_retry is not None:
                on_retry(attempt, err, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def retry(
    *,
    attempts: int = 3,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    backoff: Backoff = DEFAULT_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form of :func:`retry_call`."""

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return retry_call(
                lambda: func(*args, **kwargs),
                attempts=attempts,
                retry_on=retry_on,
                backoff=backoff,
                sleep=sleep,
                rand=rand,
            )

        return wrapper

    return decorate
