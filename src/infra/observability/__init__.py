"""Metrics, traces and logs shared by Lens and Mimir.

- :mod:`infra.observability.metrics` -- metric factories and the /metrics exposition
  (single-process or ``PROMETHEUS_MULTIPROC_DIR`` multiprocess mode);
- :mod:`infra.observability.http` -- the pure-ASGI middleware both apps use: route-template
  request metrics, a server span per request, the request id;
- :mod:`infra.observability.tracing` -- the OpenTelemetry tracer provider and propagation helpers;
- :mod:`infra.observability.logging` -- structlog setup (JSON or console) with request and
  trace ids and secret redaction.
"""
