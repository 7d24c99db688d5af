"""OpenTelemetry tracing: one SDK tracer provider per process, W3C trace context in and out.

A provider is installed even without an exporter: spans still get real ids, so trace
context propagates to Lens, workers and queue messages, and log lines carry trace ids.
Spans leave the process only when an OTLP/HTTP endpoint is configured (``otel_endpoint``,
a base URL such as ``http://collector:4318``; ``/v1/traces`` is appended).

Call sites use :func:`span` for internal work (database, cache, pipeline stages),
:func:`inject_headers` / :func:`extract_context` to carry context across HTTP requests,
NATS message headers or a subprocess environment.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

_TRACER_NAME = "mimir-lens"
_TRACES_PATH = "/v1/traces"
_lock = threading.Lock()
_provider: TracerProvider | None = None
_endpoints: set[str] = set()

AttributeValue = str | bool | int | float


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector base URL (kept when it already names the path)."""
    base = endpoint.rstrip("/")
    return base if base.endswith(_TRACES_PATH) else base + _TRACES_PATH


def setup_tracing(
    service: str,
    *,
    version: str = "",
    environment: str = "",
    endpoint: str | None = None,
    processor: SpanProcessor | None = None,
) -> TracerProvider:
    """Install this process's tracer provider (once) and add exporters; safe to call again.

    The first call names the service (``service.name``); OpenTelemetry allows one global
    provider per process, so later calls only add the OTLP exporter for a new endpoint
    or an extra ``processor`` (tests pass an in-memory one).
    """
    global _provider
    with _lock:
        if _provider is None:
            attrs: dict[str, str] = {"service.name": service}
            if version:
                attrs["service.version"] = version
            if environment:
                attrs["deployment.environment.name"] = environment
            _provider = TracerProvider(resource=Resource.create(attrs))
            trace.set_tracer_provider(_provider)
        provider = _provider
        if endpoint and traces_url(endpoint) not in _endpoints:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            url = traces_url(endpoint)
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
            _endpoints.add(url)
    if processor is not None:
        provider.add_span_processor(processor)
    return provider


def flush(timeout_millis: int = 5000) -> None:
    """Push buffered spans out now (at shutdown, before a worker process exits)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def tracer() -> trace.Tracer:
    return trace.get_tracer(_TRACER_NAME)


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue | None] | None = None,
    **attrs: AttributeValue | None,
) -> Iterator[Span]:
    """A child span of whatever is current; exceptions are recorded and mark it as an error.

    Attributes come as a mapping (dotted names: ``{"db.system.name": "postgresql"}``) or as
    keywords, where ``__`` stands for a dot (``db__operation__name="SELECT"``). ``None``
    values are dropped, so call sites can pass optional values as they are.
    """
    merged = {**(attributes or {}), **{k.replace("__", "."): v for k, v in attrs.items()}}
    clean = {k: v for k, v in merged.items() if v is not None}
    with tracer().start_as_current_span(name, kind=kind, attributes=clean) as current:
        yield current


def mark_error(current: Span, exc: BaseException) -> None:
    """Record an exception the caller handles itself (a span's own ``with`` only sees raised ones)."""
    current.record_exception(exc)
    current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def inject_headers(carrier: dict[str, str] | None = None) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``/baggage) for the current context, for outgoing headers."""
    out: dict[str, str] = {} if carrier is None else carrier
    propagate.inject(out)
    return out


def extract_context(headers: Mapping[str, Any] | None) -> otel_context.Context:
    """The remote parent context in incoming headers (HTTP, NATS); the empty context when absent.

    Header names are matched case-insensitively; list values (some NATS clients) use the first.
    """
    carrier: dict[str, str] = {}
    for key, value in (headers or {}).items():
        if isinstance(value, list | tuple):
            value = value[0] if value else ""
        carrier[str(key).lower()] = str(value)
    return propagate.extract(carrier)


def inject_env() -> dict[str, str]:
    """``TRACEPARENT``/``TRACESTATE`` for a child process's environment (the env-carrier convention)."""
    return {key.upper(): value for key, value in inject_headers().items()}


def extract_env(environ: Mapping[str, str]) -> otel_context.Context:
    """The parent context a starter put in this process's environment with :func:`inject_env`."""
    return extract_context(
        {k: v for k, v in environ.items() if k in ("TRACEPARENT", "TRACESTATE", "BAGGAGE")}
    )


@contextmanager
def attached(ctx: otel_context.Context) -> Iterator[None]:
    """Make ``ctx`` (e.g. from :func:`extract_context`) current for the block."""
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) as hex when a valid span is current, for log lines."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


__all__ = [
    "SpanKind",
    "attached",
    "current_ids",
    "extract_context",
    "extract_env",
    "flush",
    "inject_env",
    "inject_headers",
    "mark_error",
    "setup_tracing",
    "span",
    "tracer",
    "traces_url",
]
