"""The Mimir server's result cache: built from settings at app start, visible in /ready and metrics.

Only the server caches: the library facade stays uncached unless a cache is installed, so a
CLI or test calling ``Mimir`` directly always computes. With ``MIMIR_REDIS_URL`` the cache is
shared by every replica; without it, each process keeps a small in-memory LRU.
"""

from __future__ import annotations

from collections.abc import Callable

from infra.cache import Cache, JsonCache, Outcome, make_cache, readiness_probe
from infra.health import ComponentState, Readiness
from mimir.serve import metrics
from mimir.service import Mimir

CACHED = ("search", "ask")


def _set_up(ok: bool) -> None:
    metrics.CACHE_UP.set(1 if ok else 0)


def _observer(kind: str) -> Callable[[Outcome], None]:
    def observe(outcome: Outcome) -> None:
        metrics.CACHE_REQUESTS.labels(cache=kind, result=outcome).inc()
        _set_up(outcome != "error")

    return observe


def install_cache(service: Mimir, readiness: Readiness) -> Cache | None:
    """Attach search/ask caches to ``service`` and a "cache" probe (never required) to ``readiness``.

    ``MIMIR_CACHE_TTL_S=0`` switches caching off (the probe then says "disabled").
    """
    settings = service.settings
    if settings.cache_ttl_s <= 0:
        service.result_caches = {}
        readiness.add("cache", lambda: ComponentState("disabled"), required=False)
        return None
    cache = make_cache(
        settings.redis_url, f"{settings.nats_namespace}:mimir", timeout_s=settings.cache_timeout_s
    )
    service.result_caches = {
        kind: JsonCache(cache, ttl_s=settings.cache_ttl_s, observe=_observer(kind)) for kind in CACHED
    }
    readiness.add("cache", readiness_probe(cache, _set_up), required=False)
    _set_up(cache.state() == "ok")
    return cache
