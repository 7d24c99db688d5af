"""Request rate limits: at most ``limit`` hits per key in any sliding window (default 60 s).

A sliding log is exact (no burst of 2x at a fixed-window edge) and its retry_after is the
moment the oldest hit leaves the window. ``MemoryRateLimiter`` is per process;
``RedisRateLimiter`` runs the same algorithm in one Lua script on Redis's clock, so every
replica sees one shared count. When Redis is down the limiter fails open: rate limiting
protects capacity, it is not correctness, so requests pass, ``on_error`` is told (a metric),
and ``state()`` says degraded until Redis answers again.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from infra.health import ComponentState, Probe
from infra.redis_guard import RedisGuard, RedisUnavailable, redis_client

LimiterState = Literal["ok", "degraded"]


@dataclass(frozen=True)
class RateDecision:
    """``retry_after_s`` is 0 when allowed; otherwise seconds until one more hit would pass."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float


class RateLimiter(Protocol):
    backend: str  # "memory" or "redis"

    def hit(self, key: str) -> RateDecision:
        """Count one request for ``key`` (a token, user or address) if it is within the limit."""
        ...

    def state(self) -> LimiterState: ...

    def close(self) -> None: ...


class MemoryRateLimiter:
    """In-process sliding log; the embedded default (one replica, so nothing to share)."""

    backend = "memory"

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = 60.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit <= 0 or window_s <= 0:
            raise ValueError("limit and window_s must be positive")
        self.limit = limit
        self._window = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # Least recently hit first; evicting a key forgets its count (a fail-open, never a lockout).
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def hit(self, key: str) -> RateDecision:
        now = self._clock()
        with self._lock:
            log = self._hits.get(key)
            if log is None:
                log = self._hits[key] = deque()
                if len(self._hits) > self._max_keys:
                    self._hits.popitem(last=False)
            else:
                self._hits.move_to_end(key)
            while log and log[0] <= now - self._window:
                log.popleft()
            if len(log) < self.limit:
                log.append(now)
                return RateDecision(True, self.limit, self.limit - len(log), 0.0)
            return RateDecision(False, self.limit, 0, max(0.0, log[0] + self._window - now))

    def state(self) -> LimiterState:
        return "ok"

    def close(self) -> None:
        with self._lock:
            self._hits.clear()


# KEYS[1]: the key's sorted set of hits (score = time in microseconds); ARGV: limit, window in
# microseconds, a unique member id. Redis's own clock, so replicas with skewed clocks agree.
_SLIDING_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""


class RedisRateLimiter:
    """Sliding log in Redis, atomic per hit; all replicas pointing at one Redis share the count."""

    backend = "redis"

    def __init__(
        self,
        guard: RedisGuard,
        limit: int,
        *,
        prefix: str,
        window_s: float = 60.0,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        if limit <= 0 or window_s <= 0:
            raise ValueError("limit and window_s must be positive")
        self.limit = limit
        self._guard = guard
        self._prefix = f"{prefix}:ratelimit:"
        self._window_us = int(window_s * 1_000_000)
        self._on_error = on_error
        self._script = guard.client.register_script(_SLIDING_LOG)

    def _redis_key(self, key: str) -> str:
        # Keys are often bearer tokens: only a digest may reach Redis (and its MONITOR/slowlog).
        return self._prefix + hashlib.sha256(key.encode()).hexdigest()[:32]

    def hit(self, key: str) -> RateDecision:
        member = uuid.uuid4().hex
        try:
            allowed, remaining, retry_us = self._guard.call(
                lambda _r: self._script(
                    keys=[self._redis_key(key)], args=[self.limit, self._window_us, member]
                )
            )
        except RedisUnavailable:
            if self._on_error is not None:
                self._on_error()
            return RateDecision(True, self.limit, self.limit, 0.0)
        return RateDecision(bool(allowed), self.limit, int(remaining), max(0.0, int(retry_us) / 1e6))

    def state(self) -> LimiterState:
        return "ok" if self._guard.probe() else "degraded"

    def close(self) -> None:
        self._guard.close()


def make_rate_limiter(
    redis_url: str | None,
    per_minute: int,
    prefix: str,
    *,
    timeout_s: float = 0.25,
    on_error: Callable[[], None] | None = None,
) -> RateLimiter | None:
    """None when ``per_minute`` is 0 (no limit); Redis-backed when a URL is set, else in-process.

    ``on_error`` is called once per hit that failed open because Redis was unavailable.
    """
    if per_minute <= 0:
        return None
    if not redis_url:
        return MemoryRateLimiter(per_minute)
    guard = RedisGuard(redis_client(redis_url, timeout_s=timeout_s))
    return RedisRateLimiter(guard, per_minute, prefix=prefix, on_error=on_error)


def readiness_probe(limiter: RateLimiter) -> Probe:
    """A ``Readiness`` probe: ok, or degraded while Redis is down and requests pass unchecked."""

    def probe() -> ComponentState:
        return ComponentState(limiter.state(), {"backend": limiter.backend, "fail_open": True})

    return probe
