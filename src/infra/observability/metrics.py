"""Metric factories both services share, and a /metrics exposition that is right with N workers.

Every service defines its metrics once, at import, on the default registry. When
``PROMETHEUS_MULTIPROC_DIR`` is set (several uvicorn workers), prometheus_client keeps
each process's values in files there and :func:`exposition` merges them, so every worker
answers a scrape with the whole service's numbers. Gauges therefore always name a
``multiprocess_mode``; it is ignored in single-process mode.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# 2.0 and 5.0 are the Lens and Mimir latency SLO thresholds (docs/OBSERVABILITY.md, Alerts).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED_ROUTE = "<unmatched>"


@dataclass(frozen=True)
class HttpMetrics:
    """The request metrics the shared HTTP middleware records for one service."""

    requests: Counter
    duration: Histogram
    in_flight: Gauge


def http_metrics(prefix: str) -> HttpMetrics:
    """``<prefix>_http_requests_total``, ``..._request_duration_seconds``, ``..._requests_in_flight``."""
    return HttpMetrics(
        requests=Counter(
            f"{prefix}_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
        ),
        duration=Histogram(
            f"{prefix}_http_request_duration_seconds",
            "HTTP request latency until the response ends (streams included)",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS,
        ),
        in_flight=Gauge(
            f"{prefix}_http_requests_in_flight",
            "HTTP requests being served",
            multiprocess_mode="livesum",
        ),
    )


def build_info(prefix: str) -> Gauge:
    """``<prefix>_build_info{version,python}`` = 1; a Gauge because Info does not work multiprocess."""
    return Gauge(
        f"{prefix}_build_info",
        "Always 1; the labels say which build is running",
        ["version", "python"],
        multiprocess_mode="max",
    )


def set_build_info(gauge: Gauge, version: str) -> None:
    gauge.labels(version=version, python=platform.python_version()).set(1)


def multiprocess_dir() -> Path | None:
    """The multiprocess directory when this process runs in prometheus_client multiprocess mode."""
    raw = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    return Path(raw) if raw else None


def exposition() -> tuple[bytes, str]:
    """(body, content type) for /metrics: merged over all workers in multiprocess mode."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int | None = None) -> None:
    """On worker exit: drop this process's live-gauge files so in-flight and similar sums stay right."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid if pid is not None else os.getpid())  # type: ignore[no-untyped-call]
