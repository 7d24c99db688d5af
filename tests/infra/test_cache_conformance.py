"""One cache contract, two implementations: the in-process MemoryCache and the shared RedisCache."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis_server import delete_prefix, fresh_prefix, shared_redis_url

from infra.cache import (
    Cache,
    JsonCache,
    MemoryCache,
    Outcome,
    RedisCache,
    cache_key,
    make_cache,
    readiness_probe,
)
from infra.redis_guard import RedisGuard, RedisUnavailable, redis_client
from support import free_port


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    if request.param == "memory":
        made: Cache = MemoryCache()
        yield made
        made.close()
        return
    url, prefix = shared_redis_url(), fresh_prefix()
    made = make_cache(url, prefix, timeout_s=2.0)
    assert isinstance(made, RedisCache)
    try:
        yield made
    finally:
        made.close()
        delete_prefix(url, prefix)


def test_roundtrip_miss_and_outcomes(cache: Cache) -> None:
    assert cache.get("absent") is None
    assert cache.lookup("absent") == ("miss", None)
    cache.set("k", b"value", 30)
    assert cache.get("k") == b"value"
    assert cache.lookup("k") == ("hit", b"value")
    assert cache.state() == "ok"


def test_overwrite_replaces_value_and_ttl(cache: Cache) -> None:
    cache.set("k", b"first", 0.2)
    cache.set("k", b"second", 30)
    time.sleep(0.35)
    assert cache.get("k") == b"second"


def test_delete(cache: Cache) -> None:
    cache.set("k", b"v", 30)
    cache.delete("k")
    assert cache.get("k") is None
    cache.delete("never-set")  # deleting a missing key is not an error
    assert cache.get("never-set") is None


def test_ttl_expiry(cache: Cache) -> None:
    cache.set("short", b"v", 0.2)
    cache.set("long", b"v", 30)
    assert cache.get("short") == b"v"
    time.sleep(0.35)
    assert cache.get("short") is None
    assert cache.get("long") == b"v"


def test_ttl_must_be_positive(cache: Cache) -> None:
    with pytest.raises(ValueError):
        cache.set("k", b"v", 0)


def test_binary_and_empty_values(cache: Cache) -> None:
    binary = bytes(range(256)) * 4 + b"\x00\xff\r\n"
    cache.set("bin", binary, 30)
    cache.set("empty", b"", 30)
    assert cache.get("bin") == binary
    assert cache.lookup("empty") == ("hit", b"")  # an empty value is a hit, not a miss


def test_large_value(cache: Cache) -> None:
    big = os.urandom(5 << 20)
    cache.set("big", big, 30)
    assert cache.get("big") == big


def test_odd_keys(cache: Cache) -> None:
    keys = ["with space", "colons:a:b", "ünïcödé-🔍", "x" * 1000]
    for i, key in enumerate(keys):
        cache.set(key, str(i).encode(), 30)
    assert [cache.get(k) for k in keys] == [str(i).encode() for i in range(len(keys))]


def test_concurrent_threads(cache: Cache) -> None:
    """Own keys always read back what the thread wrote; a shared key never holds a torn value."""
    valid = {f"shared-{t}".encode() * 100 for t in range(8)}
    errors: list[str] = []

    def work(t: int) -> None:
        try:
            for i in range(150):
                own = f"t{t}-{i % 10}"
                value = f"{t}:{i}".encode()
                cache.set(own, value, 30)
                if cache.get(own) != value:
                    errors.append(f"thread {t} lost its write {i}")
                cache.set("shared", f"shared-{t}".encode() * 100, 30)
                seen = cache.get("shared")
                if seen not in valid:
                    errors.append(f"torn shared value {seen!r:.40}")
        except Exception as exc:  # collected and asserted below: a thread's crash must fail the test
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_json_cache_and_get_or_compute(cache: Cache) -> None:
    seen: list[Outcome] = []
    jc = JsonCache(cache, ttl_s=30, observe=seen.append)
    value: dict[str, Any] = {
        "results": [{"path": "a.py", "score": 0.1 + 0.2, "ranges": [[1, 2]]}],
        "unicode": "é",
    }
    calls: list[int] = []

    def compute() -> dict[str, Any]:
        calls.append(1)
        return value

    assert jc.get_or_compute("k", compute) == value
    hit = jc.get_or_compute("k", compute)
    assert hit == value and len(calls) == 1
    assert seen == ["miss", "hit"]
    hit["results"].clear()  # mutating a hit must not reach the cache
    assert jc.get("k") == value

    degraded = {"degraded": True}
    jc.get_or_compute("d", lambda: degraded, cacheable=lambda v: not v["degraded"])
    assert jc.get("d") is None


def test_corrupt_json_entry_is_an_error_not_an_answer(cache: Cache) -> None:
    seen: list[Outcome] = []
    cache.set("bad", b"\xff not json", 30)
    assert JsonCache(cache, ttl_s=30, observe=seen.append).get("bad") is None
    assert seen == ["error"]


def test_readiness_probe_reports_ok(cache: Cache) -> None:
    states: list[bool] = []
    result = readiness_probe(cache, states.append)()
    assert result.state == "ok" and result.detail["backend"] == cache.backend
    assert states == [True]


def test_cache_key_changes_with_every_part() -> None:
    base = cache_key("search", "idx", 1.5, {"q": "a", "k": 5})
    assert base.startswith("search:")
    assert base == cache_key("search", "idx", 1.5, {"k": 5, "q": "a"})  # argument order is irrelevant
    others = {
        cache_key("ask", "idx", 1.5, {"q": "a", "k": 5}),
        cache_key("search", "idx2", 1.5, {"q": "a", "k": 5}),
        cache_key("search", "idx", 1.6, {"q": "a", "k": 5}),
        cache_key("search", "idx", 1.5, {"q": "b", "k": 5}),
    }
    assert base not in others and len(others) == 4


# -- memory only ---------------------------------------------------------------------------
def test_memory_lru_bounds_by_entries_and_bytes() -> None:
    by_count = MemoryCache(max_entries=2)
    by_count.set("a", b"1", 30)
    by_count.set("b", b"2", 30)
    assert by_count.get("a") == b"1"  # a is now the most recently used
    by_count.set("c", b"3", 30)
    assert by_count.get("b") is None and by_count.get("a") == b"1" and by_count.get("c") == b"3"

    by_size = MemoryCache(max_bytes=10)
    by_size.set("a", b"12345", 30)
    by_size.set("b", b"12345", 30)
    by_size.set("c", b"1", 30)
    assert by_size.get("a") is None and by_size.get("b") == b"12345"
    by_size.set("huge", b"x" * 11, 30)  # larger than the whole cache: not stored, nothing evicted
    assert by_size.get("huge") is None and by_size.get("c") == b"1"


def test_memory_ttl_with_injected_clock() -> None:
    now = [100.0]
    cache = MemoryCache(clock=lambda: now[0])
    cache.set("k", b"v", 10)
    now[0] = 109.9
    assert cache.get("k") == b"v"
    now[0] = 110.0
    assert cache.get("k") is None


# -- redis only ----------------------------------------------------------------------------
def test_redis_instances_with_one_prefix_share_entries() -> None:
    url, prefix = shared_redis_url(), fresh_prefix()
    a, b, other = make_cache(url, prefix), make_cache(url, prefix), make_cache(url, fresh_prefix())
    try:
        a.set("k", b"from-a", 30)
        assert b.get("k") == b"from-a"  # another replica sees it
        assert other.get("k") is None  # another deployment (prefix) does not
    finally:
        for c in (a, b, other):
            c.close()
        delete_prefix(url, prefix)


def test_make_cache_picks_the_backend() -> None:
    assert isinstance(make_cache(None, "p"), MemoryCache)
    redis_cache = make_cache(shared_redis_url(), fresh_prefix())
    assert isinstance(redis_cache, RedisCache)
    redis_cache.close()


def test_redis_down_is_a_fast_miss_and_degraded() -> None:
    dead = make_cache(f"redis://127.0.0.1:{free_port()}/0", fresh_prefix(), timeout_s=0.25)
    try:
        started = time.monotonic()
        assert dead.lookup("k") == ("error", None)
        dead.set("k", b"v", 30)  # dropped, not raised
        dead.delete("k")
        assert dead.get("k") is None
        assert dead.state() == "degraded"
        assert time.monotonic() - started < 2.0
        probe = readiness_probe(dead)()
        assert probe.state == "degraded" and probe.detail["error"]
    finally:
        dead.close()


def test_guard_backs_off_after_a_failure_then_lets_one_trial_through() -> None:
    """After a failure nothing reaches Redis until the backoff ends; then one success heals it."""
    now = [0.0]
    guard = RedisGuard(redis_client(shared_redis_url(), timeout_s=1.0), backoff_s=1.0, clock=lambda: now[0])
    reached: list[str] = []

    def failing(_client: object) -> None:
        reached.append("fail")
        raise ConnectionError("simulated network failure")

    def working(_client: object) -> str:
        reached.append("ok")
        return "pong"

    try:
        with pytest.raises(RedisUnavailable):
            guard.call(failing)
        assert not guard.healthy
        now[0] = 0.5
        with pytest.raises(RedisUnavailable):
            guard.call(working)  # still backing off: Redis is not contacted
        assert reached == ["fail"]
        now[0] = 1.0
        assert guard.call(working) == "pong"
        assert guard.healthy and reached == ["fail", "ok"]
    finally:
        guard.close()
