import pytest

from {{module}} import Backoff, RetryError, retry, retry_call


class Flaky:
    def __init__(self, failures, error=ConnectionError):
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return ("ok", args, kwargs)


def test_succeeds_after_transient_failures_with_exponential_delays():
    sleeps = []
    flaky = Flaky(3)
    result = retry_call(flaky, attempts=5, backoff=Backoff(base=1, factor=2, jitter=0), sleep=sleeps.append)
    assert result == ("ok", (), {})
    assert flaky.calls == 4
    assert sleeps == [1, 2, 4]


def test_gives_up_after_the_last_attempt():
    sleeps = []
    flaky = Flaky(10)
    with pytest.raises(RetryError) as info:
        retry_call(flaky, attempts=3, sleep=sleeps.append, rand=lambda: 0.5)
    assert flaky.calls == 3 and len(sleeps) == 2
    assert info.value.attempts == 3
    assert isinstance(info.value.last, ConnectionError) and info.value.__cause__ is info.value.last
    assert "failure 3" in str(info.value)


def test_other_exceptions_are_not_retried():
    flaky = Flaky(1, error=KeyError)
    with pytest.raises(KeyError):
        retry_call(flaky, attempts=5, retry_on=(ConnectionError,), sleep=lambda s: None)
    assert flaky.calls == 1


def test_jitter_and_cap():
    b = Backoff(base=1, factor=10, maximum=50, jitter=0.2)
    assert b.delay(1, lambda: 0.0) == pytest.approx(0.8)
    assert b.delay(1, lambda: 1.0) == pytest.approx(1.2)
    assert b.delay(2, lambda: 0.5) == pytest.approx(10)
    assert b.delay(3, lambda: 1.0) == 50
    assert 0.9 <= Backoff(base=1, jitter=0.1).delay(1) <= 1.1


def test_invalid_settings():
    for kwargs in [dict(base=-1), dict(factor=0.5), dict(base=2, maximum=1), dict(jitter=1.5)]:
        with pytest.raises(ValueError):
            Backoff(**kwargs)
    with pytest.raises(ValueError):
        retry_call(lambda: 1, attempts=0)


def test_on_retry_is_told():
    seen = []
    retry_call(Flaky(2), attempts=3, backoff=Backoff(base=0.5, jitter=0), sleep=lambda s: None,
               on_retry=lambda n, err, wait: seen.append((n, str(err), wait)))
    assert seen == [(1, "failure 1", 0.5), (2, "failure 2", 1.0)]


def test_decorator_passes_arguments_and_keeps_metadata():
    sleeps = []
    flaky = Flaky(1, error=TimeoutError)

    @retry(attempts=2, retry_on=(TimeoutError,), backoff=Backoff(base=3, jitter=0), sleep=sleeps.append)
    def fetch(x, *, y):
        """Fetch something."""
        return flaky(x, y=y)

    assert fetch(1, y=2) == ("ok", (1,), {"y": 2})
    assert sleeps == [3]
    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Fetch something."


def test_decorator_gives_up():
    @retry(attempts=2, sleep=lambda s: None)
    def broken():
        raise ValueError("nope")

    with pytest.raises(RetryError):
        broken()
