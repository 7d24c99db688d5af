"""One rate-limit contract, two implementations: in-process and Redis (shared by replicas)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis_server import delete_prefix, fresh_prefix, shared_redis_url

from infra.ratelimit import (
    MemoryRateLimiter,
    RateDecision,
    RateLimiter,
    RedisRateLimiter,
    make_rate_limiter,
    readiness_probe,
)
from infra.redis_guard import RedisGuard, redis_client
from support import free_port

Factory = Callable[..., RateLimiter]


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """make_limiter(limit, window_s=60.0) -> a limiter; Redis ones share this test's prefix."""
    made: list[RateLimiter] = []
    url = shared_redis_url() if request.param == "redis" else ""
    prefix = fresh_prefix()

    def make(limit: int, window_s: float = 60.0) -> RateLimiter:
        limiter: RateLimiter
        if request.param == "memory":
            limiter = MemoryRateLimiter(limit, window_s=window_s)
        else:
            guard = RedisGuard(redis_client(url, timeout_s=2.0))
            limiter = RedisRateLimiter(guard, limit, prefix=prefix, window_s=window_s)
        made.append(limiter)
        return limiter

    try:
        yield make
    finally:
        for limiter in made:
            limiter.close()
        if url:
            delete_prefix(url, prefix)


def test_exact_limit_per_window(make_limiter: Factory) -> None:
    limiter = make_limiter(5)
    decisions = [limiter.hit("client") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True] * 5
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert all(d.limit == 5 and d.retry_after_s == 0 for d in decisions)
    denied = limiter.hit("client")
    assert denied.allowed is False and denied.remaining == 0 and denied.limit == 5
    assert 59.0 < denied.retry_after_s <= 60.0
    assert limiter.state() == "ok"
    assert readiness_probe(limiter)().state == "ok"


def test_keys_are_limited_separately(make_limiter: Factory) -> None:
    limiter = make_limiter(2)
    assert [limiter.hit("a").allowed for _ in range(3)] == [True, True, False]
    assert limiter.hit("b") == RateDecision(True, 2, 1, 0.0)


def test_retry_after_is_when_a_hit_passes_again(make_limiter: Factory) -> None:
    limiter = make_limiter(2, window_s=1.0)
    limiter.hit("k")
    limiter.hit("k")
    denied = limiter.hit("k")
    assert not denied.allowed and 0.5 < denied.retry_after_s <= 1.0
    time.sleep(denied.retry_after_s + 0.05)
    assert limiter.hit("k").allowed


def test_window_slides_rather_than_resets(make_limiter: Factory) -> None:
    """Hits leave the window one by one: no fixed-window edge where 2x the limit gets through."""
    limiter = make_limiter(2, window_s=1.0)
    assert limiter.hit("k").allowed
    time.sleep(0.5)
    assert limiter.hit("k").allowed
    assert not limiter.hit("k").allowed
    time.sleep(0.6)  # only the first hit has left the window
    assert limiter.hit("k").allowed
    late = limiter.hit("k")
    assert not late.allowed and 0 < late.retry_after_s <= 0.5


def test_denied_hits_do_not_count(make_limiter: Factory) -> None:
    limiter = make_limiter(1, window_s=0.5)
    assert limiter.hit("k").allowed
    for _ in range(5):
        assert not limiter.hit("k").allowed
    time.sleep(0.55)
    assert limiter.hit("k").allowed  # hammering while limited did not extend the lockout


def test_concurrent_hits_never_exceed_the_limit(make_limiter: Factory) -> None:
    limiter = make_limiter(50)
    allowed: list[bool] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(25):
            d = limiter.hit("busy")
            with lock:
                allowed.append(d.allowed)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(allowed) == 200 and sum(allowed) == 50


def test_limit_and_window_must_be_positive(make_limiter: Factory) -> None:
    with pytest.raises(ValueError):
        make_limiter(0)
    with pytest.raises(ValueError):
        make_limiter(1, window_s=0)


# -- redis only ----------------------------------------------------------------------------
def test_two_replicas_share_one_limit() -> None:
    """Two limiter instances (separate clients, as in two processes) on one Redis act as one."""
    url, prefix = shared_redis_url(), fresh_prefix()
    a = make_rate_limiter(url, 4, prefix)
    b = make_rate_limiter(url, 4, prefix)
    assert a is not None and b is not None
    try:
        assert [a.hit("token").allowed, b.hit("token").allowed] == [True, True]
        assert [a.hit("token").remaining, b.hit("token").remaining] == [1, 0]
        assert not a.hit("token").allowed and not b.hit("token").allowed

        allowed: list[bool] = []
        lock = threading.Lock()

        def work(limiter: RateLimiter) -> None:
            for _ in range(20):
                d = limiter.hit("other")
                with lock:
                    allowed.append(d.allowed)

        threads = [threading.Thread(target=work, args=(x,)) for x in (a, b, a, b)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sum(allowed) == 4
    finally:
        a.close()
        b.close()
        delete_prefix(url, prefix)


def test_keys_in_redis_are_digests_not_tokens() -> None:
    url, prefix = shared_redis_url(), fresh_prefix()
    limiter = make_rate_limiter(url, 3, prefix)
    assert limiter is not None
    client = redis.Redis.from_url(url)
    try:
        limiter.hit("secret-bearer-token")
        keys = [k.decode() for k in client.scan_iter(match=f"{prefix}*")]
        assert len(keys) == 1 and "secret-bearer-token" not in keys[0]
        ttl_ms = client.pttl(keys[0])
        assert 0 < ttl_ms <= 60_000  # the log expires with its window
    finally:
        client.close()
        limiter.close()
        delete_prefix(url, prefix)


def test_make_rate_limiter_picks_the_backend() -> None:
    assert make_rate_limiter(None, 0, "p") is None
    assert make_rate_limiter(shared_redis_url(), 0, "p") is None
    assert isinstance(make_rate_limiter(None, 10, "p"), MemoryRateLimiter)
    limiter = make_rate_limiter(shared_redis_url(), 10, fresh_prefix())
    assert isinstance(limiter, RedisRateLimiter)
    limiter.close()


def test_redis_down_fails_open_and_counts_it() -> None:
    errors: list[int] = []
    dead = make_rate_limiter(
        f"redis://127.0.0.1:{free_port()}/0", 1, fresh_prefix(), on_error=lambda: errors.append(1)
    )
    assert dead is not None
    try:
        decisions = [dead.hit("k") for _ in range(3)]
        assert all(d.allowed for d in decisions)  # over the limit of 1, yet allowed: fail open
        assert len(errors) == 3  # every fail-open decision is counted, backoff-skipped ones too
        assert dead.state() == "degraded"
        probe = readiness_probe(dead)()
        assert probe.state == "degraded" and probe.detail["backend"] == "redis"
    finally:
        dead.close()
