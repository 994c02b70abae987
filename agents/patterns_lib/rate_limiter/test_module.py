import pytest

from {{module}} import KeyedLimiter, TokenBucket


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_burst_then_refused():
    clock = Clock()
    bucket = TokenBucket(rate=1, capacity=3, clock=clock)
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]


def test_refill_over_time():
    clock = Clock()
    bucket = TokenBucket(rate=2, capacity=2, clock=clock)
    assert bucket.allow(2)
    assert not bucket.allow()
    clock.now = 0.5
    assert bucket.allow()
    clock.now = 100
    assert bucket.allow(2)
    assert not bucket.allow()


def test_retry_after():
    clock = Clock()
    bucket = TokenBucket(rate=2, capacity=1, clock=clock)
    assert bucket.retry_after() == 0.0
    bucket.allow()
    assert bucket.retry_after() == pytest.approx(0.5)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        TokenBucket(rate=0, capacity=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, capacity=-1)


def test_keyed_buckets_are_separate():
    clock = Clock()
    limiter = KeyedLimiter(rate=1, capacity=1, clock=clock)
    assert limiter.allow("a")
    assert not limiter.allow("a")
    assert limiter.allow("b")
    assert len(limiter) == 2
