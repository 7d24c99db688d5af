"""Result cache: bytes by key with a TTL, in process (embedded default) or in Redis (shared).

A cache is an optimisation, so it never fails a request: when Redis is down a lookup is a
miss (reported as ``error`` so metrics can tell), a write is dropped, and ``state()`` says
degraded until Redis answers again (see ``redis_guard`` for the backoff). Keys carry their
own invalidation (callers put the index generation in them), so nothing here ever needs to
scan or flush.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar

from infra.health import ComponentState, Probe
from infra.observability import tracing
from infra.redis_guard import RedisGuard, RedisUnavailable, redis_client

CacheState = Literal["ok", "degraded"]
Outcome = Literal["hit", "miss", "error"]
T = TypeVar("T")


class Cache(Protocol):
    backend: str  # "memory" or "redis", for readiness and logs

    def get(self, key: str) -> bytes | None: ...

    def lookup(self, key: str) -> tuple[Outcome, bytes | None]:
        """Like get, but says whether a miss was a real miss or the cache failing."""
        ...

    def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    def delete(self, key: str) -> None: ...

    def state(self) -> CacheState: ...

    def close(self) -> None: ...


def _check_ttl(ttl_s: float) -> None:
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive: cached entries must expire")


class MemoryCache:
    """Bounded LRU with per-entry TTL, thread-safe; bounded by entry count and total bytes."""

    backend = "memory"

    def __init__(
        self,
        *,
        max_entries: int = 1024,
        max_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> bytes | None:
        return self.lookup(key)[1]

    def lookup(self, key: str) -> tuple[Outcome, bytes | None]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return "miss", None
            expires, value = entry
            if expires <= self._clock():
                self._drop(key)
                return "miss", None
            self._entries.move_to_end(key)
            return "hit", value

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        _check_ttl(ttl_s)
        if len(value) > self._max_bytes:
            return  # would evict everything else and still not fit
        with self._lock:
            self._drop(key)
            self._entries[key] = (self._clock() + ttl_s, bytes(value))
            self._bytes += len(value)
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                self._drop(next(iter(self._entries)))

    def delete(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])

    def state(self) -> CacheState:
        return "ok"

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _span_attrs(operation: str) -> dict[str, str | None]:
    return {"db.system.name": "redis", "db.operation.name": operation}


class RedisCache:
    """Redis-backed, shared by every replica; keys are ``<prefix>:cache:<key>``."""

    backend = "redis"

    def __init__(self, guard: RedisGuard, *, prefix: str) -> None:
        self._guard = guard
        self._prefix = f"{prefix}:cache:"

    def get(self, key: str) -> bytes | None:
        return self.lookup(key)[1]

    def lookup(self, key: str) -> tuple[Outcome, bytes | None]:
        with tracing.span("redis GET", attributes=_span_attrs("GET")) as span:
            outcome, raw = self._lookup(key)
            span.set_attribute("cache.outcome", outcome)
        return outcome, raw

    def _lookup(self, key: str) -> tuple[Outcome, bytes | None]:
        try:
            raw = self._guard.call(lambda r: r.get(self._prefix + key))
        except RedisUnavailable:
            return "error", None
        if raw is None:
            return "miss", None
        assert isinstance(raw, bytes)  # the client is built without decode_responses
        return "hit", raw

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        _check_ttl(ttl_s)
        ttl_ms = max(1, int(ttl_s * 1000))
        # Dropped when Redis is unavailable: the next lookup is a miss, which is always correct.
        with tracing.span("redis SET", attributes=_span_attrs("SET")), contextlib.suppress(RedisUnavailable):
            self._guard.call(lambda r: r.set(self._prefix + key, value, px=ttl_ms))

    def delete(self, key: str) -> None:
        with contextlib.suppress(RedisUnavailable):  # else the entry still expires by its TTL
            self._guard.call(lambda r: r.delete(self._prefix + key))

    @property
    def last_error(self) -> str | None:
        return self._guard.last_error

    def state(self) -> CacheState:
        return "ok" if self._guard.probe() else "degraded"

    def close(self) -> None:
        self._guard.close()


def make_cache(
    redis_url: str | None,
    prefix: str,
    *,
    timeout_s: float = 0.25,
    backoff_s: float = 1.0,
    max_entries: int = 1024,
) -> Cache:
    """RedisCache when a URL is set, else a MemoryCache (one process, nothing to share)."""
    if not redis_url:
        return MemoryCache(max_entries=max_entries)
    guard = RedisGuard(redis_client(redis_url, timeout_s=timeout_s), backoff_s=backoff_s)
    return RedisCache(guard, prefix=prefix)


def cache_key(namespace: str, *parts: Any) -> str:
    """``namespace:<sha256 of the parts as canonical JSON>``: any argument change is a new key."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return f"{namespace}:{hashlib.sha256(canonical.encode()).hexdigest()}"


class JsonCache:
    """JSON values over a byte Cache, with one TTL and an ``observe(outcome)`` hook for metrics.

    ``None`` means a miss, so a value of JSON ``null`` cannot be cached.
    """

    def __init__(
        self,
        cache: Cache,
        *,
        ttl_s: float,
        observe: Callable[[Outcome], None] | None = None,
    ) -> None:
        _check_ttl(ttl_s)
        self.cache = cache
        self.ttl_s = ttl_s
        self._observe = observe

    def get(self, key: str) -> Any | None:
        outcome, raw = self.cache.lookup(key)
        value: Any | None = None
        if raw is not None:
            try:
                value = json.loads(raw)
            except ValueError:
                outcome = "error"  # a corrupt entry is a cache failure, never an answer
        if self._observe is not None:
            self._observe(outcome)
        return value

    def set(self, key: str, value: Any) -> None:
        self.cache.set(key, json.dumps(value, separators=(",", ":")).encode(), self.ttl_s)

    def get_or_compute(
        self, key: str, compute: Callable[[], T], *, cacheable: Callable[[T], bool] = lambda _v: True
    ) -> T:
        """The cached value, else ``compute()``, stored only when ``cacheable`` (e.g. not degraded).

        A hit is a fresh decode, so callers may mutate what they get without touching the cache.
        """
        hit = self.get(key)
        if hit is not None:
            value: T = hit
            return value
        computed = compute()
        if cacheable(computed):
            self.set(key, computed)
        return computed


def readiness_probe(cache: Cache, on_state: Callable[[bool], None] | None = None) -> Probe:
    """A ``Readiness`` probe: ok or degraded (never down: a cache is never required to serve)."""

    def probe() -> ComponentState:
        state = cache.state()
        if on_state is not None:
            on_state(state == "ok")
        detail: dict[str, Any] = {"backend": cache.backend}
        error = getattr(cache, "last_error", None)
        if state != "ok" and error:
            detail["error"] = error
        return ComponentState(state, detail)

    return probe
