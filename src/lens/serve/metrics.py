"""Prometheus metrics Lens really emits (every name here is updated by code paths)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, Info

if TYPE_CHECKING:
    from lens.index.builder import IndexReport

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BUILD_INFO = Info("lens_build", "Lens version")
HTTP_REQUESTS = Counter("lens_http_requests_total", "HTTP requests", ["route", "method", "status"])
HTTP_LATENCY = Histogram(
    "lens_http_request_duration_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("lens_http_requests_in_flight", "HTTP requests being served")
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
INDEXED_SYMBOLS = Gauge("lens_repo_symbols", "Symbols in the live shard", ["repo"])
REPO_FILES = Gauge("lens_repo_files", "Files in the live shard", ["repo"])
SKIPPED_FILES = Gauge(
    "lens_skipped_files", "Files skipped at the last index run, by reason", ["repo", "reason"]
)
SHARD_GENERATION = Gauge("lens_shard_generation", "Live shard generation", ["repo"])


def record_index(report: IndexReport) -> None:
    INDEXED_FILES.labels(repo=report.name).inc(report.added + report.changed)
    INDEXED_BYTES.labels(repo=report.name).inc(report.bytes_indexed if report.full_build else 0)
    INDEXED_SYMBOLS.labels(repo=report.name).set(report.symbols)
    REPO_FILES.labels(repo=report.name).set(report.files)
    SHARD_GENERATION.labels(repo=report.name).set(report.generation)
    for reason, count in report.skipped.items():
        SKIPPED_FILES.labels(repo=report.name, reason=reason).set(count)
