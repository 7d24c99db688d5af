"""Prometheus metrics the Mimir server emits (REST, MCP over HTTP, and MCP tool calls).

Defined once at import on the default registry, so every app built in one process
(tests build many) shares them instead of failing on duplicate registration.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)

BUILD_INFO = Info("mimir_build", "Mimir version")
HTTP_REQUESTS = Counter("mimir_http_requests_total", "HTTP requests", ["route", "method", "status"])
HTTP_LATENCY = Histogram(
    "mimir_http_request_duration_seconds",
    "HTTP request latency (for /mcp SSE responses: until the stream ends)",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("mimir_http_requests_in_flight", "HTTP requests being served")
MCP_TOOL_CALLS = Counter(
    "mimir_mcp_tool_calls_total",
    "MCP tool calls by outcome: ok, error (a Mimir/Lens error the caller can act on), crash (a bug)",
    ["tool", "outcome"],
)
MCP_TOOL_LATENCY = Histogram(
    "mimir_mcp_tool_duration_seconds", "MCP tool call latency", ["tool"], buckets=_LATENCY_BUCKETS
)
LENS_REACHABLE = Gauge("mimir_lens_reachable", "1 when the last readiness probe reached Lens")

__all__ = [
    "BUILD_INFO",
    "HTTP_IN_FLIGHT",
    "HTTP_LATENCY",
    "HTTP_REQUESTS",
    "LENS_REACHABLE",
    "MCP_TOOL_CALLS",
    "MCP_TOOL_LATENCY",
]
