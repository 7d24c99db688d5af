"""The Lens server's search cache: responses keyed by the live version of every shard searched.

A shard's version is its generation directory, its ``generation`` and ``indexed_at`` (set by
every full or incremental index) and its ``vectors_version`` (bumped by every embedding
batch), so any write to a searched repository yields new keys: nothing is ever flushed,
old entries simply expire. Timed-out searches are partial, so they are never stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from infra.cache import Cache, JsonCache, Outcome, cache_key, make_cache, readiness_probe
from infra.health import ComponentState, Readiness
from lens.config import LensSettings
from lens.engine import Lens
from lens.errors import LensError, NotFound
from lens.serve import metrics


def _set_up(ok: bool) -> None:
    metrics.CACHE_UP.set(1 if ok else 0)


def _observe(outcome: Outcome) -> None:
    metrics.CACHE_REQUESTS.labels(result=outcome).inc()
    _set_up(outcome != "error")


class SearchCache:
    """Search responses through a JsonCache; ``cache=None`` means every search is computed."""

    def __init__(self, engine: Lens, cache: Cache | None, ttl_s: float) -> None:
        self.engine = engine
        self.cache = cache
        self._json = JsonCache(cache, ttl_s=ttl_s, observe=_observe) if cache is not None else None

    def versions(self, repos: list[str] | None) -> list[list[Any]]:
        """The version of each shard the search may read.

        indexed_at and commit tell apart two builds that reached the same generation number
        elsewhere (another data directory sharing this Redis and namespace).
        """
        names = self.engine.catalog.names()
        if repos:
            missing = set(repos) - set(names)
            if missing:  # no view for names that are not indexed (they would pile up in ShardSet)
                raise NotFound(f"unknown repository: {sorted(missing)}")
            names = sorted(set(repos))
        out: list[list[Any]] = []
        for name in names:
            with self.engine.searcher.shards.view(name).snapshot() as snap:
                meta = snap.meta
                out.append(
                    [name, snap.shard.parent.name]
                    + [meta.get(k) for k in ("generation", "vectors_version", "indexed_at", "commit")]
                )
        return out

    def search(self, params: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``compute()`` or its cached response; ``params`` must hold every input but the timeout."""
        if self._json is None:
            return compute()
        try:
            versions = self.versions(params.get("repos"))
        except (LensError, OSError, sqlite3.Error):
            return compute()  # e.g. an unknown repository: the search itself reports it properly
        key = cache_key("search", versions, params, self.engine.settings.embed)
        out: dict[str, Any] = self._json.get_or_compute(
            key, compute, cacheable=lambda r: not r.get("timed_out")
        )
        return out

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def install_search_cache(engine: Lens, settings: LensSettings, readiness: Readiness) -> SearchCache:
    """The app's search cache from settings, plus a "cache" probe (never required) in ``readiness``.

    ``LENS_CACHE_TTL_S=0`` switches caching off (the probe then says "disabled").
    """
    if settings.cache_ttl_s <= 0:
        readiness.add("cache", lambda: ComponentState("disabled"), required=False)
        return SearchCache(engine, None, 1)
    prefix = f"{settings.nats_namespace}:lens"
    cache = make_cache(settings.redis_url, prefix, timeout_s=settings.cache_timeout_s)
    readiness.add("cache", readiness_probe(cache, _set_up), required=False)
    _set_up(cache.state() == "ok")
    return SearchCache(engine, cache, settings.cache_ttl_s)
