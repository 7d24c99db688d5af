"""A Redis connection that degrades instead of hanging or raising into a request.

Cache and rate limiter both sit on the request path, where Redis is an optimisation or a
protection, never the answer. So every call gets a short socket timeout, a failure opens a
short backoff during which calls are skipped (a dead Redis is not hammered), and after the
backoff one caller is let through as a trial: its success marks Redis healthy again without
restarting anything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis failed just now, or failed recently and is being left alone until the backoff ends."""


def redis_client(url: str, *, timeout_s: float) -> redis.Redis:
    """A pooled, thread-safe client; one immediate retry heals a pooled socket Redis closed on restart."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )


class RedisGuard:
    """Runs calls against one Redis client; remembers whether Redis is healthy."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        backoff_s: float = 1.0,
        on_error: Callable[[BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._backoff_s = backoff_s
        self._on_error = on_error
        self._clock = clock
        self._lock = threading.Lock()
        self._healthy = True
        self._retry_at = 0.0
        self.last_error: str | None = None

    @property
    def healthy(self) -> bool:
        """The outcome of the last call that reached Redis (True before the first one)."""
        return self._healthy

    def call(self, fn: Callable[[redis.Redis], T]) -> T:
        """``fn(client)``, or RedisUnavailable when it fails or Redis is in its backoff."""
        with self._lock:
            if not self._healthy:
                now = self._clock()
                if now < self._retry_at:
                    raise RedisUnavailable(self.last_error or "redis unavailable")
                # This caller is the trial; everyone else keeps skipping until it reports back.
                self._retry_at = now + self._backoff_s
        try:
            result = fn(self.client)
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                self._healthy = False
                self._retry_at = self._clock() + self._backoff_s
                self.last_error = f"{type(exc).__name__}: {exc}"
            if self._on_error is not None:
                self._on_error(exc)
            raise RedisUnavailable(self.last_error) from exc
        with self._lock:
            self._healthy = True
        return result

    def probe(self) -> bool:
        """PING through the guard (skipped during the backoff); True when Redis answered."""
        try:
            return bool(self.call(lambda r: r.ping()))
        except RedisUnavailable:
            return False

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()
