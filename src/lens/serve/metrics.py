"""Prometheus metrics Lens really emits (every name here is updated by code paths)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from infra.observability.metrics import build_info, http_metrics

if TYPE_CHECKING:
    from lens.index.builder import IndexReport

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# lens_build_info{version,python}; lens_http_requests_total / _request_duration_seconds
# {route,method,status}; lens_http_requests_in_flight -- recorded by infra.observability.http.
BUILD_INFO = build_info("lens")
HTTP = http_metrics("lens")
SEARCH_LATENCY = Histogram(
    "lens_search_duration_seconds", "Search latency by mode", ["mode"], buckets=_LATENCY_BUCKETS
)
SEARCH_RESULTS = Histogram(
    "lens_search_results",
    "Results returned per search",
    ["mode"],
    buckets=(0, 1, 5, 10, 20, 50, 100, 500, 1000),
)
SEARCH_TRUNCATED = Counter("lens_search_truncated_total", "Searches whose results were truncated", ["mode"])
SEARCH_TIMEOUTS = Counter("lens_search_timeouts_total", "Searches that hit their time budget", ["mode"])
SEARCH_ERRORS = Counter("lens_search_errors_total", "Searches rejected or failed", ["code"])
INDEX_JOBS = Counter("lens_index_jobs_total", "Index jobs by outcome", ["outcome"])
INDEX_DURATION = Histogram(
    "lens_index_duration_seconds", "Index job duration", buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
)
INDEXED_FILES = Counter("lens_indexed_files_total", "Files written to shards", ["repo"])
INDEXED_BYTES = Counter("lens_indexed_bytes_total", "Bytes written to shards", ["repo"])
# Per-repository gauges: the most recent write wins across worker processes.
INDEXED_SYMBOLS = Gauge(
    "lens_repo_symbols", "Symbols in the live shard", ["repo"], multiprocess_mode="mostrecent"
)
REPO_FILES = Gauge("lens_repo_files", "Files in the live shard", ["repo"], multiprocess_mode="mostrecent")
SKIPPED_FILES = Gauge(
    "lens_skipped_files",
    "Files skipped at the last index run, by reason",
    ["repo", "reason"],
    multiprocess_mode="mostrecent",
)
SHARD_GENERATION = Gauge(
    "lens_shard_generation", "Live shard generation", ["repo"], multiprocess_mode="mostrecent"
)
SHARDS = Gauge("lens_shards", "Live shards (indexed repositories) served", multiprocess_mode="mostrecent")

# -- search cache and rate limits (infra.cache, infra.ratelimit) --------------------------
CACHE_REQUESTS = Counter(
    "lens_cache_requests_total",
    "Search cache lookups by result: hit, miss, error (cache unavailable, answered uncached)",
    ["result"],
)
CACHE_UP = Gauge(
    "lens_cache_up",
    "1 when the search cache answered its last call or probe, 0 while it is degraded",
    multiprocess_mode="livemin",
)
RATE_LIMITED = Counter("lens_rate_limited_total", "Requests refused by the rate limit (HTTP 429)")
RATE_LIMITER_ERRORS = Counter(
    "lens_rate_limiter_errors_total",
    "Requests let through unchecked because the rate limiter's Redis was unavailable (fail open)",
)

# -- shard shipping (lens.ship): indexers publish, searcher replicas install -----------------
SHARD_SYNC_LAG = Gauge(
    "lens_shard_sync_lag_seconds",
    "Seconds since a publication this searcher has not installed yet (0 when current)",
    ["repo"],
    multiprocess_mode="mostrecent",
)
SHARD_SYNC = Counter(
    "lens_shard_sync_total",
    "Shipped shard installs by outcome: installed, failed, verify_failed",
    ["outcome"],
)
SHARD_SYNC_SECONDS = Histogram(
    "lens_shard_sync_seconds",
    "Download + verify + install time of one shipped shard",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
SHARD_PUBLISH = Counter(
    "lens_shard_publish_total", "Shard publications by outcome: published, failed", ["outcome"]
)


def record_index(report: IndexReport) -> None:
    INDEXED_FILES.labels(repo=report.name).inc(report.added + report.changed)
    INDEXED_BYTES.labels(repo=report.name).inc(report.bytes_indexed if report.full_build else 0)
    INDEXED_SYMBOLS.labels(repo=report.name).set(report.symbols)
    REPO_FILES.labels(repo=report.name).set(report.files)
    SHARD_GENERATION.labels(repo=report.name).set(report.generation)
    for reason, count in report.skipped.items():
        SKIPPED_FILES.labels(repo=report.name, reason=reason).set(count)
