"""Prometheus metrics the Mimir server emits (REST, MCP over HTTP, and MCP tool calls).

Defined once at import on the default registry, so every app built in one process
(tests build many) shares them instead of failing on duplicate registration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from infra.observability.metrics import build_info, http_metrics
from mimir.breaker import CircuitBreaker, State

if TYPE_CHECKING:
    from mimir.store import RunRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)
_STAGE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

# mimir_build_info{version,python}; mimir_http_requests_total / _request_duration_seconds
# {route,method,status}; mimir_http_requests_in_flight -- recorded by infra.observability.http.
BUILD_INFO = build_info("mimir")
HTTP = http_metrics("mimir")

# -- MCP --------------------------------------------------------------------------------
MCP_TOOL_CALLS = Counter(
    "mimir_mcp_tool_calls_total",
    "MCP tool calls by outcome: ok, error (a Mimir/Lens error the caller can act on), crash (a bug), "
    "cancelled",
    ["tool", "outcome"],
)
MCP_TOOL_LATENCY = Histogram(
    "mimir_mcp_tool_duration_seconds",
    "MCP tool call latency",
    ["tool", "outcome"],
    buckets=_LATENCY_BUCKETS,
)

# -- business ---------------------------------------------------------------------------
SEARCHES = Counter("mimir_searches_total", "Searches answered (REST and MCP)", ["mode"])
ASKS = Counter("mimir_asks_total", "Research questions answered (REST and MCP)")
REPOSITORIES_INDEXED = Counter(
    "mimir_repositories_indexed_total", "Index runs that made a repository at a commit searchable"
)

# -- index runs (observed by the process that reaps the run's worker) ---------------------
INDEX_RUNS = Counter("mimir_index_runs_total", "Finished index runs by final state", ["state"])
PIPELINE_STAGE_DURATION = Histogram(
    "mimir_pipeline_stage_duration_seconds",
    "Duration of each finished pipeline stage",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)

# -- the Lens integration -----------------------------------------------------------------
LENS_REQUESTS = Counter(
    "mimir_lens_requests_total",
    "Lens HTTP calls by operation and outcome: ok, error (Lens refused), unavailable, rejected_open",
    ["operation", "outcome"],
)
LENS_REQUEST_DURATION = Histogram(
    "mimir_lens_request_duration_seconds",
    "Lens HTTP call latency, retries and backoff included",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
)
LENS_RETRIES = Counter("mimir_lens_retries_total", "Lens HTTP call retries", ["operation"])
LENS_CALLS = Counter(
    "mimir_lens_calls_total",
    "Lens calls by result: success (Lens answered), failure (the error reached the caller), "
    "fallback (Lens failed and the answer came from stored snippets instead)",
    ["result"],
)
LENS_CIRCUIT_STATE = Gauge(
    "mimir_lens_circuit_state",
    "Lens circuit breaker: 0 closed, 1 half-open, 2 open (worst over live workers)",
    multiprocess_mode="livemax",
)
LENS_CIRCUIT_TRANSITIONS = Counter(
    "mimir_lens_circuit_transitions_total",
    "Lens circuit breaker state changes",
    ["from_state", "to_state"],
)
LENS_REACHABLE = Gauge(
    "mimir_lens_reachable",
    "1 when the last readiness probe reached Lens",
    multiprocess_mode="livemostrecent",
)

# -- result cache and rate limits (infra.cache, infra.ratelimit) --------------------------
CACHE_REQUESTS = Counter(
    "mimir_cache_requests_total",
    "Result cache lookups by cache (search, ask) and result: hit, miss, error (cache unavailable, "
    "answered uncached)",
    ["cache", "result"],
)
CACHE_UP = Gauge(
    "mimir_cache_up",
    "1 when the result cache answered its last call or probe, 0 while it is degraded",
    multiprocess_mode="livemin",
)
RATE_LIMITED = Counter("mimir_rate_limited_total", "Requests refused by the rate limit (HTTP 429)")
RATE_LIMITER_ERRORS = Counter(
    "mimir_rate_limiter_errors_total",
    "Requests let through unchecked because the rate limiter's Redis was unavailable (fail open)",
)

# -- work queue (queue mode: the API and each `mimir worker --metrics-port`) ---------------
QUEUE_DEPTH = Gauge(
    "mimir_queue_depth",
    "Index jobs in the work queue not yet settled (waiting or being worked on); refreshed on a timer",
    multiprocess_mode="livemostrecent",
)
QUEUE_JOBS = Counter(
    "mimir_queue_jobs_total",
    "Index job deliveries handled by workers, by outcome: succeeded, failed (last attempt failed), "
    "retried, dead_lettered (moved to the DLQ stream), handed_back (worker shutdown), cancelled, "
    "skipped (already done), abandoned (heartbeats failed: left for redelivery)",
    ["outcome"],
)
QUEUE_REDELIVERIES = Counter(
    "mimir_queue_redeliveries_total", "Index jobs delivered again (after a failure, a crash or a hand-back)"
)
QUEUE_DEAD_LETTERS = Counter("mimir_queue_dead_letters_total", "Index jobs moved to the dead-letter stream")

_CIRCUIT_VALUE = {"closed": 0, "half_open": 1, "open": 2}


def record_lens_call(operation: str, outcome: str, seconds: float, retries: int, *, fallback: bool) -> None:
    """One finished Lens HTTP call; ``fallback`` says the caller answers around a failure."""
    LENS_REQUESTS.labels(operation=operation, outcome=outcome).inc()
    LENS_REQUEST_DURATION.labels(operation=operation).observe(seconds)
    if retries:
        LENS_RETRIES.labels(operation=operation).inc(retries)
    # Lens answered, even with a 4xx: it works as designed. Otherwise the caller fell back or failed.
    answered = outcome in ("ok", "error")
    LENS_CALLS.labels(result="success" if answered else "fallback" if fallback else "failure").inc()


def record_circuit_change(old: str, new: str) -> None:
    """A Lens circuit breaker's ``on_state_change`` hook."""
    LENS_CIRCUIT_STATE.set(_CIRCUIT_VALUE.get(new, 0))
    LENS_CIRCUIT_TRANSITIONS.labels(from_state=old, to_state=new).inc()


def record_run(run: RunRecord) -> None:
    """A finished index run: its final state and the duration of each stage it completed.

    Stages run in a worker subprocess whose metrics would die with it, so the process
    that reaps the worker observes them from the store (the worker wrote them there).
    """
    INDEX_RUNS.labels(state=run.state).inc()
    for stage in run.stages:
        if stage.get("status") == "succeeded" and stage.get("seconds") is not None:
            PIPELINE_STAGE_DURATION.labels(stage=stage["stage"]).observe(float(stage["seconds"]))
    if run.state == "succeeded":
        REPOSITORIES_INDEXED.inc()


def watch_breaker(breaker: CircuitBreaker) -> None:
    """Export a Lens breaker's state and transitions, keeping any listener it already has."""
    previous = breaker.on_state_change

    def listener(old: State, new: State) -> None:
        record_circuit_change(old, new)
        if previous is not None:
            previous(old, new)

    breaker.on_state_change = listener
    LENS_CIRCUIT_STATE.set(_CIRCUIT_VALUE[breaker.state])


__all__ = [
    "ASKS",
    "BUILD_INFO",
    "CACHE_REQUESTS",
    "CACHE_UP",
    "HTTP",
    "INDEX_RUNS",
    "LENS_CALLS",
    "LENS_CIRCUIT_STATE",
    "LENS_CIRCUIT_TRANSITIONS",
    "LENS_REACHABLE",
    "LENS_REQUESTS",
    "LENS_REQUEST_DURATION",
    "LENS_RETRIES",
    "MCP_TOOL_CALLS",
    "MCP_TOOL_LATENCY",
    "PIPELINE_STAGE_DURATION",
    "QUEUE_DEAD_LETTERS",
    "QUEUE_DEPTH",
    "QUEUE_JOBS",
    "QUEUE_REDELIVERIES",
    "RATE_LIMITED",
    "RATE_LIMITER_ERRORS",
    "REPOSITORIES_INDEXED",
    "SEARCHES",
    "record_circuit_change",
    "record_lens_call",
    "record_run",
    "watch_breaker",
]
