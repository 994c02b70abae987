import pytest

from {{module}} import LRUCache


def test_get_put_and_stats():
    cache = LRUCache(2)
    cache.put("a", 1)
    assert cache.get("a") == 1
    assert cache.get("b", "none") == "none"
    assert (cache.hits, cache.misses) == (1, 1)


def test_least_recently_used_is_evicted():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    cache.put("c", 3)
    assert "a" in cache and "c" in cache
    assert "b" not in cache
    assert len(cache) == 2


def test_overwrite_refreshes():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert cache.get("a") == 10
    assert cache.get("b") is None


def test_ttl_expiry():
    now = [0.0]
    cache = LRUCache(4, ttl=10, clock=lambda: now[0])
    cache.put("a", 1)
    now[0] = 5
    assert cache.get("a") == 1
    now[0] = 20
    assert "a" not in cache
    assert cache.get("a") is None
    assert len(cache) == 0


def test_invalid_size():
    with pytest.raises(ValueError):
        LRUCache(0)
