"""One pure-ASGI middleware for both apps: request metrics, a server span, the request id, an access log.

Pure ASGI (not ``BaseHTTPMiddleware``) so streamed responses -- Mimir's ``/mcp`` SSE --
pass through untouched and are timed until they end. Add it *last* so it wraps every
other middleware: requests refused by auth or rate limits are counted and logged too.

The ``route`` label is the route template the app's router would pick
(``/api/indexes/{index_id}``), ``<unmatched>`` when none does, and a mount's own path for
everything under it: bounded by the number of routes, whatever paths clients send.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.observability.logging import bind_request, unbind
from infra.observability.metrics import UNMATCHED_ROUTE, HttpMetrics
from infra.observability.tracing import extract_context, tracer

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})


def route_template(routes: Iterable[BaseRoute], scope: Scope) -> str:
    """The template of the route that serves (or, for a wrong method, would serve) this request."""
    partial: str | None = None
    for route in routes:
        if not isinstance(route, Route | Mount):
            continue
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route.path or "/"
        if match is Match.PARTIAL and partial is None:
            partial = route.path
    return partial or UNMATCHED_ROUTE


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token, else a fresh one."""
    for key, value in headers:
        if key == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1").strip()
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class ObservabilityMiddleware:
    """Counts, times, traces and logs every HTTP request; returns ``X-Request-ID``."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, logger_name: str) -> None:
        self.app = app
        self.metrics = metrics
        self.log = logging.getLogger(logger_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope.get("method", "")
        router = getattr(scope.get("app"), "router", None)
        route = route_template(getattr(router, "routes", ()), scope)
        request_id = request_id_from(scope.get("headers", ()))
        header_map = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        status = 500

        async def send_wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        tokens = bind_request(request_id)
        self.metrics.in_flight.inc()
        with tracer().start_as_current_span(
            f"{method} {route}",
            context=extract_context(header_map),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "http.route": route,
                "url.path": scope.get("path", ""),
                "url.scheme": scope.get("scheme", "http"),
                "request.id": request_id,
            },
            record_exception=True,
            set_status_on_exception=True,
        ) as current:
            try:
                await self.app(scope, receive, send_wrapped)
            finally:
                seconds = time.perf_counter() - started
                self.metrics.in_flight.dec()
                labels = {"route": route, "method": method, "status": str(status)}
                self.metrics.requests.labels(**labels).inc()
                self.metrics.duration.labels(**labels).observe(seconds)
                current.set_attribute("http.response.status_code", status)
                if status >= 500:
                    current.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
                self.log.log(
                    logging.DEBUG if route in _QUIET_ROUTES else logging.INFO,
                    "%s %s %s",
                    method,
                    scope.get("path", ""),
                    status,
                    extra={
                        "http_method": method,
                        "http_route": route,
                        "http_status": status,
                        "duration_ms": round(seconds * 1000, 2),
                    },
                )
                unbind(tokens)


__all__ = ["REQUEST_ID_HEADER", "ObservabilityMiddleware", "request_id_from", "route_template"]
